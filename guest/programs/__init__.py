"""Programs the rig uploads into the guest and runs there (Python 3 + pyroute2 only)."""
