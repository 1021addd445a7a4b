"""`rig run`: boot a guest, run one command in it over SSH, shut down; exit with its status."""

from __future__ import annotations

import argparse
import logging
import shlex
import shutil
import sys
import tempfile
from pathlib import Path

from rig.commands.options import (
    Subparsers,
    add_driver_options,
    add_guest_options,
    command_after_dashes,
    driver_options,
    guest_options,
    output_dir,
    positive_int,
    seconds,
)
from rig.progress import stream_to
from rig.rig import Rig, RigConfig
from rig.vm.cmdline import Modprobe

logger = logging.getLogger(__name__)


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser(
        "run",
        help="boot a guest, run a command in it over SSH, shut down",
        description="Exit status: the command's; 2 if the rig failed.",
    )
    add_guest_options(p)
    p.add_argument(
        "--keep-logs",
        metavar="DIR",
        type=Path,
        help="write console.log, qmp.log, qemu-stderr.log here (default: a temporary "
        "directory, removed unless something fails)",
    )
    p.add_argument(
        "--no-device",
        dest="device",
        action="store_false",
        help="boot without the emulated ConnectX-3",
    )
    p.add_argument(
        "--no-driver",
        dest="driver",
        action="store_false",
        help="do not load mlx4_core at boot (the device is still attached)",
    )
    add_driver_options(p)
    p.add_argument(
        "--mlx4-param",
        metavar="PARAM=VALUE",
        action="append",
        default=[],
        help="an extra mlx4_core module parameter",
    )
    p.add_argument(
        "--modprobe",
        metavar="'MODULE [PARAM=VALUE ...]'",
        action="append",
        default=[],
        help="load another module at boot, before the guest is ready",
    )
    p.add_argument(
        "--append",
        metavar="ARG",
        action="append",
        default=[],
        help="an extra kernel command-line argument",
    )
    p.add_argument("--memory", metavar="MIB", type=positive_int, default=1024)
    p.add_argument("--boot-timeout", metavar="S", type=seconds, default=120.0)
    p.add_argument(
        "--timeout", metavar="S", type=seconds, default=600.0, help="limit for the command itself"
    )
    p.add_argument(
        "--hang-after",
        metavar="S",
        type=seconds,
        default=90.0,
        help="no console output and no SSH answer for this long is a hang (exit 2)",
    )
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD [ARG ...]")
    p.set_defaults(func=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    command = command_after_dashes(args.command, "rig run [options] -- CMD ...")
    if args.keep_logs is not None:
        output_dir(args.keep_logs, "--keep-logs")
    log_dir: Path = args.keep_logs or Path(tempfile.mkdtemp(prefix="rig-logs-"))
    config = RigConfig(
        log_dir=log_dir,
        **guest_options(args),
        **driver_options(args),
        mlx4_params=tuple(args.mlx4_param),
        with_device=args.device,
        load_driver=args.device and args.driver,
        memory_mib=args.memory,
        boot_timeout=args.boot_timeout,
        hang_after=args.hang_after,
        kernel_args=tuple(args.append),
        extra_modprobe=tuple(Modprobe.parse(m) for m in args.modprobe),
    )
    succeeded = False
    try:
        with Rig(config) as rig:
            logger.info("guest ready in %s", rig.boot_times.summary())
            result = rig.sh(
                shlex.join(command),
                args.timeout,
                check=False,
                on_stdout=stream_to(sys.stdout.buffer),
                on_stderr=stream_to(sys.stderr.buffer),
            )
        succeeded = True
        return result.status
    finally:
        if args.keep_logs is None:
            # A failure before the boot (provisioning, bad input) wrote no log: nothing to keep.
            if succeeded or not any(log_dir.iterdir()):
                shutil.rmtree(log_dir, ignore_errors=True)
            else:
                logger.info("logs kept in %s", log_dir)
