"""The `rig` command: the parser, and one exit policy for every subcommand.

Each subcommand lives in rig/commands/<name>.py with an `add_parser(sub)`, named in
COMMANDS. Exit status, the same everywhere: 0 the kernel under test passed, 1 it failed,
2 the rig or its input failed (rig.errors documents the tree), 128 + N when signal N ended it
(130 SIGINT, 143 SIGTERM, 129 SIGHUP: rig.signals; the VM and the device model are torn down
and a replay's report.json written first); a command that runs a guest command (`rig run`,
`rig sh`) exits with that command's status. Errors print one line on stderr (a log tail may
follow), never a traceback (RIG_DEBUG=1 shows one for errors the rig did not foresee).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import traceback
from collections.abc import Sequence

from cx3.client import ControlError
from rig import signals
from rig.commands.options import Parser
from rig.errors import RigError

# Each subcommand by the module in rig/commands/ that registers it (its add_parser or
# add_parsers), in `rig --help`'s order. Only the module of the command asked for is imported:
# all of them cost every run ~0.15 s (bench, matrix, kbuild). tests/unit/test_cli_table.py
# keeps this table and the modules in step.
COMMANDS = {
    "setup": "setup",
    "run": "run",
    "replay": "replay",
    "up": "interactive",
    "down": "interactive",
    "sh": "interactive",
    "devlink": "interactive",
    "link": "interactive",
    "load": "interactive",
    "truth": "interactive",
    "fault": "interactive",
    "build-kernel": "build_kernel",
    "coverage": "coverage",
    "validate": "validate",
    "matrix": "matrix",
    "bench": "bench",
    "traffic": "traffic",
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; with `command` (a subcommand's name), only that command's module's."""
    # Subcommands' parsers are of the same class: each usage error is one line.
    parser: argparse.ArgumentParser = Parser(
        prog="rig",
        description="QEMU rig for the mlx4 driver's devlink regions (crdump)",
        epilog="exit status: 0 the kernel under test passed, 1 it failed, 2 the rig or its "
        "input failed, 128+N ended by signal N (130 SIGINT, 143 SIGTERM, 129 SIGHUP)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress messages")
    sub = parser.add_subparsers(dest="subcommand", required=True, metavar="COMMAND")
    modules = [COMMANDS[command]] if command in COMMANDS else dict.fromkeys(COMMANDS.values())
    for name in modules:
        module = importlib.import_module(f"rig.commands.{name}")
        (getattr(module, "add_parsers", None) or module.add_parser)(sub)
    return parser


def _command(argv: Sequence[str]) -> str | None:
    """The subcommand named in `argv` (after the global options), if any."""
    for arg in argv:
        if arg not in ("-q", "--quiet"):
            return None if arg.startswith("-") else arg
    return None


def _show_progress(quiet: bool) -> None:
    """The rig's log records on stderr as "rig: ...", INFO and up (WARNING with -q)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("rig: %(message)s"))
    logger = logging.getLogger("rig")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    logger.propagate = False


def main(argv: Sequence[str] | None = None) -> int:
    signals.install()
    try:
        return _main(argv)
    except signals.Interrupted as e:  # outside any command (e.g. while parsing)
        print(f"rig: {e}", file=sys.stderr)
        return e.exit_status


def _main(argv: Sequence[str] | None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(_command(argv)).parse_args(argv)  # usage errors: one line, exit 2
    _show_progress(args.quiet)
    try:
        status: int = args.func(args)
        return status
    except RigError as e:
        print(f"rig: error: {e}", file=sys.stderr)
        return e.exit_status
    except ControlError as e:  # the device model refused a request (e.g. a bad knob value)
        print(f"rig: error: the device model refused: {e}", file=sys.stderr)
        return 2
    except signals.Interrupted as e:
        # Every Rig is a context manager: the VM and the device model are down already.
        print(f"rig: {e}", file=sys.stderr)
        return e.exit_status
    except KeyboardInterrupt:
        print("rig: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if os.environ.get("RIG_DEBUG"):
            traceback.print_exc()
        print(
            f"rig: internal error: {type(e).__name__}: {e} (RIG_DEBUG=1 shows where)",
            file=sys.stderr,
        )
        return 2


if __name__ == "__main__":
    sys.exit(main())
