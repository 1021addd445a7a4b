"""`rig setup`: provision QEMU, the guest kernel, initramfs and root fs; list the cache."""

from __future__ import annotations

import argparse

from rig.cache import cache_root, list_entries
from rig.commands.options import Subparsers, add_guest_options
from rig.progress import step
from rig.provision.guest import ensure_guest
from rig.provision.mstflint import ensure_connectx3_csv
from rig.provision.qemu import qemu_for
from rig.provision.suites import DEFAULT_SUITE, known

KERNEL_HELP = (
    f"guest kernel: deb:SUITE, the cloud-amd64 kernel Debian's {known()} installs "
    f"(default: deb:{DEFAULT_SUITE}); deb:PACKAGE[=VERSION], a linux-image-* package of any of "
    "them; a directory with bzImage (or vmlinuz, boot/vmlinuz-*) and lib/modules/<release> "
    "(or usr/lib/modules/<release>), e.g. Debian's packages unpacked with dpkg-deb -x (no "
    "modules.dep needed: the rig indexes a private copy); or build:SOURCE[+PATCHES], built from "
    "source on first use: SOURCE is 6.1 (Debian's linux-source-6.1), 6.1=VERSION or a kernel "
    "tree, PATCHES a series (see `rig build-kernel --help`), e.g. "
    "build:6.1+guest/patches/example-break-crdump"
)


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser("setup", help="provision QEMU, the guest kernel, initramfs and root fs")
    add_guest_options(p, KERNEL_HELP, boots=False)
    p.set_defaults(func=cmd_setup)


def cmd_setup(args: argparse.Namespace) -> int:
    with step("finding or building QEMU"):
        qemu = qemu_for(args.qemu, args.qemu_version)
    guest = ensure_guest(args.kernel, args.userspace)
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
