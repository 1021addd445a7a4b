#!/bin/sh
# Runs inside a virtme-ng guest (`vng --exec`, tests/e2e/test_virtme.py): mlx4_core on the
# emulated ConnectX-3, its regions listed, then, after the catas fault the host injects
# through the card's control socket, the driver's cr-space snapshot dumped to stdout.
# The guest's root is the host's, shared over 9p: devlink and python3 are the host's.
set -eu

modprobe mlx4_core
dev=$(devlink dev show | grep -m1 '^pci/')
# mlx4 takes no snapshot unless asked (its crdump logs "devlink snapshot disabled, skipping").
devlink dev param set "$dev" name region_snapshot_enable value true cmode runtime
devlink region show
echo "cx3-vng: waiting for the fault"

# The driver logs its restart after the crdump: read the kernel log as it comes, from boot on
# (a record at a time: /dev/kmsg refuses short reads, so not the shell's `read`).
timeout 300 python3 -c '
import os
fd = os.open("/dev/kmsg", os.O_RDONLY)
while b"mlx4_restart_one was ended" not in os.read(fd, 8192):
    pass
'

region="$dev/cr-space"
snapshot=$(devlink region show "$region" | sed -n 's/.*snapshot \[\([0-9]*\).*/\1/p')
echo "cx3-vng: $region snapshot $snapshot"
devlink region dump "$region" snapshot "$snapshot"
echo "cx3-vng: end"
