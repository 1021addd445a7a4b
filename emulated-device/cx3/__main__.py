"""`cx3-device` (`python -m cx3`) --socket S --control C [--log L]: serve the model, one loop
for both sockets. Standalone, beside any QEMU >= 10.1: add --print-qemu-args (the arguments
that attach the card) and --exit-with-client (stop when QEMU goes away); faults and the crdump
truth go through the control socket (cx3.client.ControlClient, JSON lines).

Prints "ready" on stdout once both sockets listen (QEMU must find the vfio-user socket
listening when it starts). With --log, everything afterwards - diagnostics and any traceback -
goes to that file, because the parent stops reading our stdout after "ready"; the file is
rotated once it reaches --log-max-bytes. SIGTERM (or SIGINT) stops the model between two events
and it exits 0; anything else that ends it is a crash, with its traceback in the log.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import selectors
import shlex
import signal
import socket
import sys
from pathlib import Path
from types import FrameType

from vfio_user.qemu import attach_args, check_qemu
from vfio_user.server import Server

from . import modellog
from .device import Cx3Device
from .server import ControlServer

logger = logging.getLogger("cx3")


class StopSignal:
    """SIGTERM and SIGINT only record that the loop must stop, and wake it: a signal that
    raised would land anywhere, a client's teardown included, and run it twice."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._wake, wakeup = socket.socketpair()
        self._wake.setblocking(False)
        wakeup.setblocking(False)
        self._wakeup = wakeup
        signal.set_wakeup_fd(wakeup.fileno())  # the C handler writes a byte: select returns
        signal.signal(signal.SIGTERM, self._record)
        signal.signal(signal.SIGINT, self._record)

    def _record(self, signum: int, frame: FrameType | None) -> None:
        self.signum = signum

    def register(self, sel: selectors.BaseSelector) -> None:
        sel.register(self._wake, selectors.EVENT_READ, self._drain)

    def _drain(self) -> None:
        with contextlib.suppress(BlockingIOError):
            self._wake.recv(256)


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise ValueError(text)
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cx3-device", description=__doc__)
    parser.add_argument("--socket", required=True, help="vfio-user socket QEMU connects to")
    parser.add_argument("--control", required=True, help="control socket (JSON lines)")
    parser.add_argument("--log", type=Path, help="log file (default: stderr)")
    parser.add_argument(
        "--log-max-bytes",
        type=_positive,
        default=modellog.MAX_BYTES,
        help="rotate the log file at this size, keeping one older file (default: %(default)s)",
    )
    parser.add_argument(
        "--print-qemu-args",
        action="store_true",
        help="after 'ready', print the QEMU arguments that attach the card (one line, shell-"
        "quoted: shared guest RAM of --memory, -m, -device vfio-user-pci on --socket)",
    )
    parser.add_argument(
        "--memory", default="1G", help="guest RAM for --print-qemu-args (default: %(default)s)"
    )
    parser.add_argument(
        "--exit-with-client",
        action="store_true",
        help="stop (exit 0) once QEMU disconnects: a standalone card lives as long as its VM",
    )
    parser.add_argument(
        "--inline-work",
        action="store_true",
        help="finish a doorbell's work (a send queue walk) before answering its write, not a "
        "frame at a time between later messages: with a QEMU that waits for every write's "
        "answer and counts guest time in instructions (-icount), the work costs the guest "
        "no time",
    )
    parser.add_argument(
        "--check-qemu",
        type=Path,
        metavar="QEMU",
        help="only check that this qemu-system binary can attach the card (QEMU >= 10.1 with "
        "vfio-user-pci); exit 0 if so, else one line and exit 2",
    )
    args = parser.parse_args(argv)
    if args.check_qemu is not None:
        problem = check_qemu(args.check_qemu)
        print(problem or f"{args.check_qemu}: can attach the card", file=sys.stderr)
        return 2 if problem else 0

    handler: logging.Handler
    if args.log:
        handler = log = modellog.CappedLog(args.log, args.log_max_bytes)
        log.follow(sys.stderr)  # tracebacks land in the log too
    else:
        handler = logging.StreamHandler(sys.stderr)
    modellog.setup(handler)
    stop = StopSignal()

    device = Cx3Device()
    server = Server(device, args.socket, log=logger.info, inline_work=args.inline_work)
    control = ControlServer(device, args.control)
    sel = selectors.DefaultSelector()
    server.register(sel)
    control.register(sel)
    stop.register(sel)
    print("ready", flush=True)
    if args.print_qemu_args:
        print(shlex.join(attach_args(args.socket, args.memory)), flush=True)
    if args.log:
        log.follow(sys.stdout)
    try:
        while stop.signum is None and not (args.exit_with_client and server.disconnects):
            # Messages first (a vCPU waits on each), then one step of background work.
            for key, _ in sel.select(0 if server.has_work() else None):
                key.data()
            if server.has_work():
                server.work()
    finally:
        control.close()
        server.close()
        device.close()
    if stop.signum is None:
        logger.info("stopped: the client disconnected (--exit-with-client)")
    else:
        logger.info("stopped by %s", signal.Signals(stop.signum).name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
