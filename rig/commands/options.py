"""Command-line pieces several rig commands share."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TypeAlias

from rig.errors import UsageError

Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def add_guest_options(p: argparse.ArgumentParser) -> None:
    """--kernel and --qemu: which guest kernel and which QEMU a command boots."""
    p.add_argument("--kernel", metavar="SPEC", help="guest kernel (see `rig setup --help`)")
    p.add_argument("--qemu", metavar="PATH", type=Path, help="use this qemu-system-x86_64")


def command_after_dashes(words: list[str], usage: str) -> list[str]:
    """The command of `... -- CMD ARGS`; UsageError naming `usage` if there is none."""
    command = words[1:] if words[:1] == ["--"] else words
    if not command:
        raise UsageError(f"no command given ({usage})")
    return command
