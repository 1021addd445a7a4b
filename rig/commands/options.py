"""Command-line pieces several rig commands share: every value is checked before use, and a
bad one is one line (`rig: error: ...`) and exit 2."""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path
from typing import NoReturn, TypeAlias, TypedDict

from rig.errors import UsageError
from rig.provision.qemu import PINNED_VERSION
from rig.provision.suites import DEFAULT_SUITE, RELEASES
from rig.rig import BOOT_ENV, BOOT_MODES, DEFAULT_BOOT
from rig.vm import clock as vmclock

Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def add_guest_options(
    p: argparse.ArgumentParser, kernel_help: str = "", boots: bool = True
) -> None:
    """--kernel, --userspace, --qemu, --qemu-version: what a command boots; and --clock, how
    the guest's time runs, when it `boots` a VM."""
    p.add_argument(
        "--kernel", metavar="SPEC", help=kernel_help or "guest kernel (see `rig setup --help`)"
    )
    p.add_argument(
        "--userspace",
        metavar="RELEASE",
        choices=RELEASES,
        help=f"the Debian release of the guest's root fs ({', '.join(RELEASES)}; default: "
        f"the kernel's own for --kernel deb:SUITE, else {DEFAULT_SUITE})",
    )
    qemu = p.add_mutually_exclusive_group()
    qemu.add_argument("--qemu", metavar="PATH", type=Path, help="use this qemu-system-x86_64")
    qemu.add_argument(
        "--qemu-version",
        metavar="VERSION",
        help=f"build (once, into the cache) and use this version of Debian's qemu source "
        f"instead of the pinned {PINNED_VERSION}: a Debian version or an upstream release "
        "such as 10.2.2",
    )
    if boots:
        p.add_argument(
            "--clock",
            choices=vmclock.CLOCKS,
            help="the guest's clock: warp (QEMU -icount: the guest's idle time runs "
            f"{vmclock.RATIO}x faster than the host's, so the driver's polls, sleeps and "
            "timeouts cost little wall time) or real (host time) (default: "
            f"${vmclock.ENV} or {vmclock.DEFAULT}; docs/clock.md)",
        )


class GuestOptions(TypedDict):
    kernel: str | None
    userspace: str | None
    qemu: Path | None
    qemu_version: str | None
    clock: str | None


def guest_options(args: argparse.Namespace) -> GuestOptions:
    """What add_guest_options parsed, as RigConfig's (and the jobs' options') fields."""
    return {
        "kernel": args.kernel,
        "userspace": args.userspace,
        "qemu": args.qemu,
        "qemu_version": args.qemu_version,
        "clock": args.clock,
    }


class Parser(argparse.ArgumentParser):
    """argparse, with a usage error on one line (no usage block) and exit 2."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"rig: error: {self.prog}: {message} (see {self.prog} --help)\n")
        sys.exit(2)


def integer(text: str) -> int:
    """An argparse type: an integer, decimal or 0x hex."""
    try:
        return int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None


def positive_int(text: str) -> int:
    value = integer(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0: {text!r}")
    return value


def count(text: str) -> int:
    """An argparse type: 0 or more."""
    value = integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0: {text!r}")
    return value


def seconds(text: str) -> float:
    """An argparse type: a time in seconds, finite and > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0: {text!r}")
    return value


def output_dir(path: Path, flag: str) -> Path:
    """`path` as a directory the command can write into (made if missing); UsageError
    naming `flag` if it is a file or cannot be made or written."""
    if path.exists() and not path.is_dir():
        raise UsageError(f"{flag} {path}: exists and is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"{flag} {path}: cannot make it: {e.strerror}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {path}: not writable")
    return path


def add_crspace_options(p: argparse.ArgumentParser, default_help: str) -> None:
    """--crspace FILE and --format: a CR-space image in any format the rig reads."""
    from rig.formats.regionfile import AUTO, FORMATS

    p.add_argument(
        "--crspace",
        metavar="FILE",
        type=Path,
        help="CR-space image: raw (1 MiB), `devlink region dump`/`read` text or JSON (-j), "
        "or mstflint's mstregdump text (a ConnectX-3's; hw_dev_id 0x1f5); a dump of part "
        f"of it is completed from the built-in image ({default_help})",
    )
    p.add_argument(
        "--format",
        dest="crspace_format",
        choices=(AUTO, *FORMATS),
        default=AUTO,
        help="read --crspace as this format (default: tell by its content)",
    )


def add_driver_options(p: argparse.ArgumentParser) -> None:
    """--no-msi-x, --no-en, --netdev-down, --boot: how the driver under test comes up."""
    p.add_argument(
        "--no-msi-x",
        dest="msi_x",
        action="store_false",
        help="load mlx4_core with msi_x=0 (INTx; slower crdump)",
    )
    p.add_argument(
        "--no-en",
        dest="mlx4_en",
        action="store_false",
        help="blacklist mlx4_en: mlx4_core alone, no netdev",
    )
    p.add_argument(
        "--netdev-down",
        dest="netdev_up",
        action="store_false",
        help="leave the card's netdevs down (default: up at boot and after every "
        "re-creation, as a production machine has them)",
    )
    p.add_argument(
        "--boot",
        choices=BOOT_MODES,
        default=None,
        help="fresh: boot the kernel; saved: resume a guest saved once after its boot (kept "
        "in the cache), then plug the card in and load the driver (default: "
        f"${BOOT_ENV} or {DEFAULT_BOOT})",
    )


class DriverOptions(TypedDict):
    msi_x: bool
    mlx4_en: bool
    netdev_up: bool
    boot: str | None


def driver_options(args: argparse.Namespace) -> DriverOptions:
    """What add_driver_options parsed, as RigConfig's (and ReplayOptions') fields."""
    return {
        "msi_x": args.msi_x,
        "mlx4_en": args.mlx4_en,
        "netdev_up": args.netdev_up,
        "boot": args.boot,
    }


def add_ktap_option(p: argparse.ArgumentParser) -> None:
    """--ktap FILE: the results as KTAP v1 too (rig.formats.ktap), for kernel CI."""
    p.add_argument(
        "--ktap",
        metavar="FILE",
        type=output_file,
        help="also write the results as KTAP v1 to FILE (one test per kernel, its "
        "behaviours as nested subtests)",
    )


def add_kcidb_option(p: argparse.ArgumentParser) -> None:
    """--kcidb FILE: the results as KCIDB v5 JSON too (rig.formats.kcidb)."""
    p.add_argument(
        "--kcidb",
        metavar="FILE",
        type=output_file,
        help="also write the results as KCIDB v5 JSON to FILE (a checkout and a build per "
        "kernel, a test per behaviour)",
    )


def command_after_dashes(words: list[str], usage: str) -> list[str]:
    """The command of `... -- CMD ARGS`; UsageError naming `usage` if there is none."""
    command = words[1:] if words[:1] == ["--"] else words
    if not command:
        raise UsageError(f"no command given ({usage})")
    return command


def output_file(text: str) -> Path:
    """An argparse type for a file the command writes at its end: refused before any run
    when its directory is missing, rather than after the VMs."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a directory")
    if not path.resolve().parent.is_dir():
        raise argparse.ArgumentTypeError(f"no directory {path.parent} for {text}")
    return path


def byte_count(text: str) -> int:
    """An argparse type for a byte count: 1048576, 64K, 8M, 1G."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    scale = units.get(text[-1:].upper(), 1)
    number = text[:-1] if scale > 1 else text
    if not number.isdigit() or int(number) <= 0:
        raise argparse.ArgumentTypeError(f"not a byte count: {text!r} (e.g. 8M)")
    return int(number) * scale
