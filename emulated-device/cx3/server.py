"""The control server: a unix socket speaking JSON lines (cx3/wire.py), ops from cx3/ops.py.

It lives in the device's single-threaded selector loop: every socket is non-blocking and
registered with a zero-argument callable as `key.data`. A client gets no new request read while
its previous reply is still being sent, which bounds what it can make the server buffer.
Fault knobs go to the `Faults` method of the same name; the other ops to HANDLERS below.
"""

from __future__ import annotations

import json
import os
import selectors
import socket
from collections.abc import Callable
from typing import Any

from vfio_user.listener import Listener

from . import ops
from .device import Cx3Device
from .wire import MAX_LINE, Reply, b64, encode_line, error_reply

RECV_SIZE = 1 << 16

Handler = Callable[..., Reply]  # (device, **the op's arguments) -> reply fields


def _events(dev: Cx3Device, since: int) -> Reply:
    return {"events": dev.events.since(since), "next": dev.events.next_index}


def _crdumps(dev: Cx3Device) -> Reply:
    return {"crdumps": [{"index": r.index, "t": r.t} for r in dev.crdumps]}


def _on_faults(name: str) -> Handler:
    """Call `Faults.<name>` with the op's arguments; the reply carries nothing more."""

    def handler(dev: Cx3Device, **args: Any) -> Reply:
        getattr(dev.faults, name)(**args)
        return {}

    return handler


#: The ops that are not fault knobs.
HANDLERS: dict[str, Handler] = {
    "ping": lambda dev: {"device": "cx3"},
    "state": lambda dev: {"state": dev.state()},
    "load_crspace": _on_faults("load_crspace"),
    "set_health": _on_faults("set_health"),
    "read_bar0": lambda dev, offset, length: {"data": b64(dev.read_bar0(offset, length))},
    "crdumps": _crdumps,
    "crdump": lambda dev, index: dev.crdumps.get(index).to_reply(),
    "events": _events,
}


def _handler(device: Cx3Device, op: ops.Op) -> Handler:
    if not op.knob:
        return HANDLERS[op.name]
    if not callable(getattr(device.faults, op.name, None)):
        raise LookupError(f"knob {op.name!r} has no method Faults.{op.name}")
    return _on_faults(op.name)


class ControlServer:
    def __init__(self, device: Cx3Device, path: str | os.PathLike[str]) -> None:
        self.device = device
        self.path = os.fspath(path)
        # Every op resolves now: a table entry without its handler or knob fails at start.
        self._ops = {op.name: (op, _handler(device, op)) for op in ops.OPS}
        self._listener = Listener(self.path, socket.SOMAXCONN)
        self._sel: selectors.BaseSelector | None = None
        self._conns: set[_Connection] = set()

    def register(self, sel: selectors.BaseSelector) -> None:
        self._sel = sel
        sel.register(self._listener.sock, selectors.EVENT_READ, self._accept)

    def close(self) -> None:
        """Idempotent: a teardown may run it again."""
        for conn in list(self._conns):
            conn.close()
        if self._sel is not None and self._listener.sock.fileno() >= 0:
            self._sel.unregister(self._listener.sock)
        self._listener.close()

    def _accept(self) -> None:
        sock = self._listener.accept()
        if sock is None:
            return
        assert self._sel is not None
        conn = _Connection(sock, self, self._sel)
        self._conns.add(conn)

    def _forget(self, conn: _Connection) -> None:
        self._conns.discard(conn)

    def handle(self, line: bytes) -> bytes:
        """One request line in, one reply line out; never raises."""
        try:
            req = json.loads(line.decode())  # decode first: json would guess UTF-16 from bytes
            if not isinstance(req, dict):
                raise ValueError("a request must be a JSON object")
            name = req.get("op")
            entry = self._ops.get(name) if isinstance(name, str) else None
            if entry is None:
                raise ValueError(f"unknown op {name!r}; known: {', '.join(self._ops)}")
            op, handler = entry
            reply: Reply = {"ok": True, **handler(self.device, **op.decode(req))}
        except (ValueError, LookupError, TypeError) as e:  # JSONDecodeError is a ValueError
            reply = error_reply(str(e) or type(e).__name__)
        except Exception as e:  # a model bug must not take the device's loop down
            reply = error_reply(f"internal error: {e!r}")
        return encode_line(reply)


class _Connection:
    """One client: reads request lines, queues reply lines, never blocks."""

    def __init__(self, sock: socket.socket, server: ControlServer, sel: selectors.BaseSelector):
        self._sock = sock
        self._server = server
        self._sel = sel
        self._in = bytearray()
        self._out = bytearray()
        self._closing = False  # close once the queued reply is out
        sock.setblocking(False)
        sel.register(sock, selectors.EVENT_READ, self._on_ready)

    def _on_ready(self) -> None:
        if self._out:
            self._flush()
        elif not self._receive():
            return  # closed
        self._process()
        if self._closing and not self._out:
            self.close()
            return
        events = selectors.EVENT_WRITE if self._out else selectors.EVENT_READ
        self._sel.modify(self._sock, events, self._on_ready)

    def _receive(self) -> bool:
        try:
            data = self._sock.recv(RECV_SIZE)
        except BlockingIOError:
            return True
        except OSError:
            data = b""
        if not data:
            self.close()
            return False
        self._in += data
        return True

    def _process(self) -> None:
        while not self._out and not self._closing:
            end = self._in.find(b"\n")
            if end < 0:
                if len(self._in) > MAX_LINE:
                    self._out += encode_line(error_reply(f"request longer than {MAX_LINE} bytes"))
                    self._closing = True
                    self._flush()
                return
            line = bytes(self._in[:end]).strip()
            del self._in[: end + 1]
            if line:
                self._out += self._server.handle(line)
                self._flush()

    def _flush(self) -> None:
        try:
            sent = self._sock.send(self._out)
        except BlockingIOError:
            return
        except OSError:  # the client went away: drop what it did not read
            self._out.clear()
            self._closing = True
            return
        del self._out[:sent]

    def close(self) -> None:
        if self._sock.fileno() >= 0:
            self._sel.unregister(self._sock)
            self._sock.close()
        self._server._forget(self)
