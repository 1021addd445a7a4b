"""`rig setup`: provision QEMU, the guest kernel, initramfs and root fs; list the cache."""

from __future__ import annotations

import argparse
from pathlib import Path

from rig.cache import cache_root, list_entries
from rig.commands.options import Subparsers
from rig.progress import step
from rig.provision.guest import ensure_guest
from rig.provision.mstflint import ensure_connectx3_csv
from rig.vm.machine import QemuInstall

KERNEL_HELP = (
    "guest kernel: a directory with bzImage + lib/modules/<release>; deb:<package>[=<version>] "
    "(default: Debian's newest 6.1 cloud-amd64); or build:SOURCE[+PATCHES], built from source "
    "on first use: SOURCE is 6.1 (Debian's linux-source-6.1), 6.1=VERSION or a kernel tree, "
    "PATCHES a series (see `rig build-kernel --help`), e.g. "
    "build:6.1+guest/patches/example-break-crdump"
)


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser("setup", help="provision QEMU, the guest kernel, initramfs and root fs")
    p.add_argument("--kernel", metavar="SPEC", help=KERNEL_HELP)
    p.add_argument("--qemu", metavar="PATH", type=Path, help="use this qemu-system-x86_64")
    p.set_defaults(func=cmd_setup)


def provision_qemu(path: Path | None) -> QemuInstall:
    """The QEMU named by --qemu, else rig.provision.qemu's (found or built into the cache)."""
    if path is not None:
        from rig.provision.localqemu import qemu_at

        return qemu_at(path)
    from rig.provision.qemu import ensure_qemu

    with step("finding or building QEMU"):
        return ensure_qemu()


def cmd_setup(args: argparse.Namespace) -> int:
    qemu = provision_qemu(args.qemu)
    guest = ensure_guest(args.kernel)
    csv = ensure_connectx3_csv()  # replay writes snapshots as mstregdump text over its list
    print(f"qemu:      {qemu.binary} ({qemu.version})")
    print(f"kernel:    {guest.kernel.release} from {guest.kernel.origin}")
    print(f"initramfs: {guest.initrd}")
    print(f"rootfs:    {guest.rootfs.image}")
    print(f"ssh key:   {guest.client_key.private}")
    print(f"mstdump:   {csv}")
    print(f"cache ({cache_root()}):")
    for kind, path, size in list_entries():
        print(f"  {kind:<10} {_human_size(size):>10}  {path}")
    return 0


def _human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"
