"""The control socket's blocking client, for the rig: imports nothing of the device model.

Error replies raise `ControlError`; a socket that closes, a reply too long, or a call after
one that ended between its request and its reply raises `ConnectionError`. Fault knobs are
called by name through `fault()`, from cx3/ops.py's KNOBS.
"""

from __future__ import annotations

import json
import os
import socket
from typing import Any

from . import layout, ops
from .wire import MAX_LINE, Crdump, CrdumpInfo, EventsPage, Reply, encode_line, unb64


class ControlError(Exception):
    """The control server refused a request (or the client refused to send it); says why."""


class ControlClient:
    def __init__(self, path: str | os.PathLike[str], timeout: float = 10.0) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        self._sock.connect(os.fspath(path))
        self._reader = self._sock.makefile("rb")
        self._out_of_step = ""  # the call that ended before its reply was read

    def close(self) -> None:
        self._reader.close()
        self._sock.close()

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, op: str, **args: Any) -> Reply:
        """Send one raw request (arguments as JSON values); returns the reply without "ok"."""
        if self._out_of_step:
            raise ConnectionError(
                f"control socket out of step: {self._out_of_step!r} ended before its reply"
            )
        try:
            self._sock.sendall(encode_line({"op": op, **args}))
            line = self._reader.readline(MAX_LINE)
        except BaseException:
            # A signal's exception (the rig turns SIGINT/SIGTERM into one) or a timeout between
            # the request and its reply: that reply, or half the request, is still on its way,
            # and the next call would take it for its own.
            self._out_of_step = op
            raise
        if not line.endswith(b"\n"):
            raise ConnectionError(f"control socket closed or reply too long during {op!r}")
        reply: Reply = json.loads(line)
        if not reply.pop("ok", False):
            raise ControlError(f"{op}: {reply.get('error', 'no error message')}")
        return reply

    def _op(self, name: str, **args: Any) -> Reply:
        """Call an op of the table with Python values (bytes, tuples), encoded as it says."""
        request = ops.BY_NAME[name].request(**args)
        return self.call(request.pop("op"), **request)

    # --- fault knobs ------------------------------------------------------------------------

    def fault(self, knob: str, **args: Any) -> None:
        """Set a fault knob, e.g. fault("cmd_timeout", opcode=0x13); arguments left out take
        the knob's defaults (cx3/ops.py KNOBS)."""
        op = ops.BY_NAME.get(knob)
        if op is None or not op.knob:
            known = ", ".join(k.name for k in ops.KNOBS)
            raise ControlError(f"no fault knob {knob!r}; known: {known}")
        self._op(knob, **args)

    # --- the other ops ----------------------------------------------------------------------

    def ping(self) -> None:
        self._op("ping")

    def state(self) -> dict[str, Any]:
        state: dict[str, Any] = self._op("state")["state"]
        return state

    def load_crspace(self, image: bytes) -> None:
        if len(image) != layout.SIZE:  # fail before shipping 1.4 MB of base64
            raise ControlError(f"load_crspace: image must be {layout.SIZE} bytes")
        self._op("load_crspace", image=image)

    def set_health(self, data: bytes) -> None:
        self._op("set_health", data=data)

    def read_bar0(self, offset: int, length: int) -> bytes:
        return unb64(self._op("read_bar0", offset=offset, length=length)["data"], "data")

    def crdumps(self) -> list[CrdumpInfo]:
        return [CrdumpInfo(c["index"], c["t"]) for c in self._op("crdumps")["crdumps"]]

    def crdump(self, index: int) -> Crdump:
        return Crdump.from_reply(self._op("crdump", index=index))

    def events(self, since: int = 0) -> EventsPage:
        r = self._op("events", since=since)
        return EventsPage(r["events"], r["next"])
