"""Command-line options several rig commands share."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_guest_options(p: argparse.ArgumentParser) -> None:
    """--kernel and --qemu: which guest kernel and which QEMU a command boots."""
    p.add_argument("--kernel", metavar="SPEC", help="guest kernel (see `rig setup --help`)")
    p.add_argument("--qemu", metavar="PATH", type=Path, help="use this qemu-system-x86_64")
