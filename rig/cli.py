"""The `rig` command. One function per subcommand; add one with an _add_<name> function
registered in SUBCOMMANDS.

Errors the user can act on (RigError) print as a message on stderr and exit 2; Ctrl-C tears
the VM down and exits 130.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from cx3.client import ControlError

from . import cmd_bench, cmd_build_kernel, cmd_interactive, cmd_replay, cmd_validate
from .cache import cache_root, list_entries
from .cliargs import add_guest_options
from .cmdline import Modprobe
from .errors import ProvisionError, RigError
from .machine import QemuInstall
from .progress import info, set_quiet, step, stream_to
from .provision.guest import ensure_guest
from .session import Rig, RigConfig


def provision_qemu(path: Path | None) -> QemuInstall:
    """The QEMU named by --qemu, else rig.provision.qemu's (found or built into the cache)."""
    if path is not None:
        from .provision.localqemu import qemu_at

        return qemu_at(path)
    try:
        from .provision.qemu import ensure_qemu
    except ImportError as e:
        raise ProvisionError(
            "TODO: QEMU provisioning (rig.provision.qemu.ensure_qemu) is not available in this "
            "checkout; pass --qemu PATH to use an existing qemu-system-x86_64"
        ) from e
    with step("finding or building QEMU"):
        return ensure_qemu()


def _human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


# -- rig setup ----------------------------------------------------------------------------


def _add_setup(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("setup", help="provision QEMU, the guest kernel, initramfs and root fs")
    p.add_argument("--kernel", metavar="SPEC",
                   help="guest kernel: a directory with bzImage + lib/modules/<release>; "
                        "deb:<package>[=<version>] (default: Debian's newest 6.1 cloud-amd64); "
                        "or build:SOURCE[+PATCHES], built from source on first use: SOURCE is "
                        "6.1 (Debian's linux-source-6.1), 6.1=VERSION or a kernel tree, "
                        "PATCHES a series (see `rig build-kernel --help`), e.g. "
                        "build:6.1+guest-kernel/patches/example-break-crdump")
    p.add_argument("--qemu", metavar="PATH", type=Path, help="use this qemu-system-x86_64")
    p.set_defaults(func=cmd_setup)


def cmd_setup(args: argparse.Namespace) -> int:
    qemu = provision_qemu(args.qemu)
    guest = ensure_guest(args.kernel)
    print(f"qemu:      {qemu.binary} ({qemu.version})")
    print(f"kernel:    {guest.kernel.release} from {guest.kernel.origin}")
    print(f"initramfs: {guest.initrd}")
    print(f"rootfs:    {guest.rootfs.image}")
    print(f"ssh key:   {guest.client_key.private}")
    print(f"cache ({cache_root()}):")
    for kind, path, size in list_entries():
        print(f"  {kind:<10} {_human_size(size):>10}  {path}")
    return 0


# -- rig run ------------------------------------------------------------------------------


def _add_run(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("run", help="boot a guest, run a command in it over SSH, shut down",
                       description="Exit status: the command's; 2 if the rig failed.")
    add_guest_options(p)
    p.add_argument("--keep-logs", metavar="DIR", type=Path,
                   help="write console.log, qmp.log, qemu-stderr.log here (default: a temporary "
                        "directory, removed unless something fails)")
    p.add_argument("--no-device", dest="device", action="store_false",
                   help="boot without the emulated ConnectX-3")
    p.add_argument("--no-driver", dest="driver", action="store_false",
                   help="do not load mlx4_core at boot (the device is still attached)")
    p.add_argument("--no-msi-x", dest="msi_x", action="store_false",
                   help="load mlx4_core with msi_x=0 (INTx)")
    p.add_argument("--mlx4-param", metavar="PARAM=VALUE", action="append", default=[],
                   help="an extra mlx4_core module parameter")
    p.add_argument("--modprobe", metavar="'MODULE [PARAM=VALUE ...]'", action="append",
                   default=[], help="load another module at boot, before the guest is ready")
    p.add_argument("--append", metavar="ARG", action="append", default=[],
                   help="an extra kernel command-line argument")
    p.add_argument("--memory", metavar="MIB", type=int, default=1024)
    p.add_argument("--boot-timeout", metavar="S", type=float, default=120.0)
    p.add_argument("--timeout", metavar="S", type=float, default=600.0,
                   help="limit for the command itself")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD [ARG ...]")
    p.set_defaults(func=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        raise RigError("rig run: no command given (rig run [options] -- CMD ...)")
    log_dir: Path = args.keep_logs or Path(tempfile.mkdtemp(prefix="rig-logs-"))
    config = RigConfig(
        log_dir=log_dir, kernel=args.kernel, qemu=args.qemu, msi_x=args.msi_x,
        mlx4_params=tuple(args.mlx4_param), with_device=args.device,
        load_driver=args.device and args.driver, memory_mib=args.memory,
        boot_timeout=args.boot_timeout, kernel_args=tuple(args.append),
        extra_modprobe=tuple(Modprobe.parse(m) for m in args.modprobe))
    succeeded = False
    try:
        with Rig(config) as rig:
            info(f"guest ready in {rig.machine.times.summary()}")
            result = rig.machine.ssh.run(shlex.join(command), args.timeout,
                                         on_stdout=stream_to(sys.stdout.buffer),
                                         on_stderr=stream_to(sys.stderr.buffer))
        succeeded = True
        return result.status
    finally:
        if args.keep_logs is None:
            if succeeded:
                shutil.rmtree(log_dir, ignore_errors=True)
            else:
                info(f"logs kept in {log_dir}")


# -- entry point --------------------------------------------------------------------------

SUBCOMMANDS = (_add_setup, _add_run, cmd_replay.add_parser, cmd_interactive.add_parsers,
               cmd_build_kernel.add_parser, cmd_validate.add_parser, cmd_bench.add_parser)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rig", description="QEMU rig for the mlx4 driver's devlink regions (crdump)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress messages")
    sub = parser.add_subparsers(dest="subcommand", required=True, metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    set_quiet(args.quiet)
    try:
        status: int = args.func(args)
        return status
    except (RigError, ControlError) as e:  # ControlError: the device model refused a request
        print(f"rig: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # The Machine context manager has already torn the VM down on the way out.
        print("rig: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
