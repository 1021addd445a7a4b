"""devlink regions seen two ways: iproute2's CLI over SSH and generic netlink in the guest."""
