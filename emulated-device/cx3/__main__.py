"""`python -m cx3 --socket S --control C [--log L]`: serve the model, one loop for both sockets.

Prints "ready" on stdout once both sockets listen (QEMU must find the vfio-user socket
listening when it starts). With --log, everything afterwards - diagnostics and any traceback -
goes to that file, because the parent stops reading our stdout after "ready".
"""

from __future__ import annotations

import argparse
import os
import selectors
import signal
import sys
import time
from collections.abc import Callable
from types import FrameType
from typing import TextIO

from vfio_user.server import Server

from .device import Cx3Device
from .server import ControlServer


def _logger(out: TextIO) -> Callable[[str], None]:
    def log(msg: str) -> None:
        out.write(f"{time.strftime('%H:%M:%S')} {msg}\n")
        out.flush()

    return log


def _stop(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)  # unwinds through the finally below, which removes the sockets


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cx3", description=__doc__)
    parser.add_argument("--socket", required=True, help="vfio-user socket QEMU connects to")
    parser.add_argument("--control", required=True, help="control socket (JSON lines)")
    parser.add_argument("--log", help="log file (default: stderr)")
    args = parser.parse_args(argv)

    out: TextIO = open(args.log, "a", buffering=1) if args.log else sys.stderr  # noqa: SIM115
    if args.log:
        os.dup2(out.fileno(), sys.stderr.fileno())  # tracebacks land in the log too
    signal.signal(signal.SIGTERM, _stop)

    device = Cx3Device()
    server = Server(device, args.socket, log=_logger(out))
    control = ControlServer(device, args.control)
    sel = selectors.DefaultSelector()
    server.register(sel)
    control.register(sel)
    print("ready", flush=True)
    if args.log:
        os.dup2(out.fileno(), sys.stdout.fileno())
    try:
        while True:
            for key, _ in sel.select():
                key.data()
    finally:
        control.close()
        server.close()
        device.close()


if __name__ == "__main__":
    sys.exit(main())
