"""Reproducing by hand: `rig up` keeps a rig running; `rig devlink|sh|fault|load|truth|down`
act on it from other terminals."""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from cx3 import ops
from rig.commands.options import (
    Subparsers,
    add_crspace_options,
    add_driver_options,
    add_guest_options,
    command_after_dashes,
    driver_options,
    guest_options,
    integer,
    output_dir,
)
from rig.errors import RigError, UsageError
from rig.formats.dumptext import format_dump
from rig.formats.regionfile import load_region_file
from rig.instance import Instance, rig_name
from rig.progress import stream_to
from rig.rig import Rig, RigConfig

logger = logging.getLogger(__name__)


def _named(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--name", type=rig_name, default="default", help="which rig (default: %(default)s)"
    )


def add_parsers(sub: Subparsers) -> None:
    p = sub.add_parser("up", help="start a rig and keep it up until Ctrl-C or `rig down`")
    _named(p)
    add_guest_options(p)
    add_driver_options(p)
    p.add_argument("--logs", metavar="DIR", type=Path, help="default: runs/up-<name>-<time>")
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("down", help="stop a rig started with `rig up`")
    _named(p)
    p.set_defaults(func=cmd_down)

    p = sub.add_parser("sh", help="run a shell command in a running rig's guest")
    _named(p)
    p.add_argument("command", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_sh)

    p = sub.add_parser(
        "devlink", help="run devlink in a running rig's guest (its own output)", prefix_chars="\0"
    )  # every argument belongs to devlink
    p.add_argument("args", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_devlink, name="default")

    _add_fault(sub)

    p = sub.add_parser(
        "link",
        help="plug (up) or pull (down) the cable between the card's two ports",
        description="The driver gets a PORT_CHANGE event on both ports: carrier follows.",
    )
    _named(p)
    p.add_argument("state", choices=("up", "down"))
    p.set_defaults(func=cmd_link)

    p = sub.add_parser("load", help="load a CR-space image and/or health buffer into the device")
    _named(p)
    add_crspace_options(p, "default: leave it as it is")
    p.add_argument("--health", metavar="FILE", type=Path)
    p.set_defaults(func=cmd_load)

    p = sub.add_parser("truth", help="what BAR0/health held at each crdump the device saw")
    _named(p)
    p.add_argument("--out", metavar="DIR", type=Path, help="save each as .bin files here")
    p.set_defaults(func=cmd_truth)


def _clear_the_way(name: str) -> None:
    """Refuse if rig `name` is up; remove what a dead one left."""
    old = Instance.load(name)
    if old is None:
        return
    if old.owner_identity.alive():
        raise RigError(f"a rig named {name!r} is already up; `rig down --name {name}`")
    removed = old.clean()
    logger.info(
        f"removed what the dead rig {name!r} left: {', '.join(removed) or 'its instance file'}"
    )


def cmd_up(args: argparse.Namespace) -> int:
    """Exit 0 when stopped (`rig down`, Ctrl-C, SIGTERM, SIGHUP); 2 when the rig failed by
    itself (QEMU or the device model died, the guest panicked, oopsed or hung): the next
    command against it says why."""
    Instance.path(args.name)  # a bad name, before it names a directory
    logs = args.logs or Path("runs") / time.strftime(f"up-{args.name}-%Y%m%d-%H%M%S")
    output_dir(logs, "--logs")
    _clear_the_way(args.name)
    with Rig(
        RigConfig(
            log_dir=logs,
            **guest_options(args),
            **driver_options(args),
            name=args.name,
        )
    ) as rig:
        inst = Instance.publish(args.name, rig)
        failed = False
        try:
            flag = "" if args.name == "default" else f" --name {args.name}"
            print(
                f"rig {args.name!r} is up: {rig.dev_handle} (logs in {logs})\n"
                f"  rig devlink region show\n"
                f"  rig devlink dev param set {rig.dev_handle} name region_snapshot_enable "
                f"value true cmode runtime\n"
                f"  rig fault{flag} catas\n"
                f"  rig sh{flag} -- dmesg | tail\n"
                f"  rig link{flag} down      (and up: the card's cable)\n"
                f"  rig down{flag}      (or Ctrl-C here)",
                flush=True,
            )
            failure = rig.wait_failure()  # a signal ends this wait with Interrupted
            inst.record_failure(str(failure).split("\n", 1)[0])
            failed = True
            raise failure
        except KeyboardInterrupt as e:
            logger.info(f"stopping rig {args.name!r} ({e or 'interrupted'})")
        finally:
            if not failed:
                inst.unpublish()
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    inst = Instance.load(args.name)
    if inst is None:
        raise RigError(f"no rig named {args.name!r} is up")
    if inst.owner_identity.alive():
        inst.stop()
        return 0
    removed = inst.clean()
    why = inst.failure or f"its `rig up` process {inst.owner[0]} died"
    why = f"it failed: {why}" if inst.failure else why
    print(
        f"rig {args.name!r} was down ({why}); removed: {', '.join(removed) or 'its instance file'}"
    )
    return 0


def _run_in_guest(name: str, command: str) -> int:
    inst = Instance.find(name)
    ssh = inst.ssh()
    try:
        res = ssh.run(
            command,
            timeout=3600,
            on_stdout=stream_to(sys.stdout.buffer),
            on_stderr=stream_to(sys.stderr.buffer),
        )
    except RigError:
        Instance.find(name)  # the rig failed meanwhile: say that rather than the lost link
        raise
    finally:
        ssh.close()
    sys.stdout.flush()
    return res.status


def cmd_sh(args: argparse.Namespace) -> int:
    command = command_after_dashes(args.command, "rig sh [--name N] -- CMD ...")
    return _run_in_guest(args.name, shlex.join(command))


def cmd_devlink(args: argparse.Namespace) -> int:
    rest = list(args.args)
    name = "default"
    if rest[:1] == ["--name"] and len(rest) > 1:
        name, rest = rest[1], rest[2:]
    return _run_in_guest(name, shlex.join(["devlink", *rest]))


def _add_fault(sub: Subparsers) -> None:
    """`rig fault KNOB [--ARG ...]`, one subcommand per fault knob of the device's op table."""
    p = sub.add_parser("fault", help="inject a fault into a running rig's device")
    _named(p)
    knobs = p.add_subparsers(dest="knob", required=True, metavar="KNOB")
    for op in ops.KNOBS:
        k = knobs.add_parser(
            op.cli_name, help=op.help, description=f"{op.help}; {op.note}" if op.note else op.help
        )
        k.add_argument(
            "--name", type=rig_name, default=argparse.SUPPRESS, help="which rig (default: default)"
        )
        for arg in op.args:
            _add_knob_arg(k, arg)
        k.set_defaults(func=cmd_fault, op=op)


def _show(value: object) -> str:
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    if isinstance(value, tuple | list):
        return " ".join(f"{w:#010x}" for w in value)
    return str(value)


def _flag(name: str, value: object) -> str:
    """How a given argument reads on the command line."""
    flag = name.replace("_", "-")
    if isinstance(value, bool):
        return f" --{flag}" if value else f" --no-{flag}"
    return f" --{flag} {_show(value)}"


def _add_knob_arg(p: argparse.ArgumentParser, arg: ops.Arg) -> None:
    flag, dest = f"--{arg.name.replace('_', '-')}", f"knob_{arg.name}"
    no_default = arg.required or arg.default is None
    kw: dict[str, Any] = {
        "dest": dest,
        "required": arg.required,
        "help": arg.help if no_default else f"{arg.help} (default: {_show(arg.default)})",
    }
    if arg.type is bool:
        p.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
    elif arg.type is tuple:
        p.add_argument(flag, metavar="WORD", type=integer, nargs="+", **kw)
    elif arg.type is bytes:
        p.add_argument(flag, metavar="FILE", type=_file_bytes, **kw)
    else:
        p.add_argument(flag, metavar="N", type=integer, **kw)


def _file_bytes(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise argparse.ArgumentTypeError(f"cannot read {path}: {e.strerror}") from None


def cmd_fault(args: argparse.Namespace) -> int:
    op: ops.Op = args.op
    given = {a.name: getattr(args, f"knob_{a.name}") for a in op.args}
    given = {n: tuple(v) if isinstance(v, list) else v for n, v in given.items() if v is not None}
    for arg in op.args:  # the knob table's ranges, checked before any rig is looked for
        if arg.check is not None and arg.name in given:
            try:
                arg.check(given[arg.name])
            except ValueError as e:
                flag = arg.name.replace("_", "-")
                raise UsageError(f"rig fault {op.cli_name} --{flag}: {e}") from None
    with Instance.find(args.name).control() as ctl:
        ctl.fault(op.name, **given)  # what is not given takes the table's default
    shown = "".join(_flag(n, v) for n, v in given.items())
    print(f"{op.cli_name}{shown}: {op.help}" + (f"; {op.note}" if op.note else ""))
    return 0


def cmd_link(args: argparse.Namespace) -> int:
    with Instance.find(args.name).control() as ctl:
        ctl.fault("link", up=args.state == "up")
    print(f"cable {'plugged in' if args.state == 'up' else 'pulled'}")
    return 0


def cmd_load(args: argparse.Namespace) -> int:
    if args.crspace is None and args.health is None:
        raise RigError("rig load: give --crspace FILE and/or --health FILE")
    from cx3 import layout as cr
    from rig.builtin import crspace_image

    crspace = health = None  # read both before touching the device
    if args.crspace is not None:
        crspace = load_region_file(
            args.crspace, cr.SIZE, "CR-space", args.crspace_format, fill=crspace_image
        )
    if args.health is not None:
        health = load_region_file(args.health, cr.HEALTH_SIZE, "health buffer")
    with Instance.find(args.name).control() as ctl:
        if crspace is not None:
            ctl.load_crspace(crspace.data)
        if health is not None:
            ctl.set_health(health.data)
    return 0


def cmd_truth(args: argparse.Namespace) -> int:
    if args.out:
        output_dir(args.out, "--out")
    with Instance.find(args.name).control() as ctl:
        dumps = ctl.crdumps()
        if not dumps:
            print("the device has seen no crdump yet")
        for info_ in dumps:
            data = ctl.crdump(info_.index)
            print(f"crdump {data.index} (t={data.t:.3f}): health buffer")
            print(format_dump(data.health), end="")
            if args.out:
                (args.out / f"crdump-{data.index}.cr-space.bin").write_bytes(data.image)
                (args.out / f"crdump-{data.index}.fw-health.bin").write_bytes(data.health)
        if args.out and dumps:
            print(f"saved to {args.out}")
    return 0
