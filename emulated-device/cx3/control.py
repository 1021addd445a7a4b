"""Control interface: a unix socket speaking JSON lines, and a typed blocking client.

One request line `{"op": NAME, ...}` gets one reply line, `{"ok": true, ...}` or
`{"ok": false, "error": "..."}`; binary payloads travel as base64. The server lives in the
device's single-threaded selector loop: every socket is non-blocking and registered with a
zero-argument callable as `key.data`. A client gets no new request read while its previous
reply is still being sent, which bounds what it can make the server buffer.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import selectors
import socket
import stat
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import crspace
from .device import Cx3Device
from .faults import DEFAULT_CATAS

MAX_LINE = 4 << 20  # a 1 MiB CR-space image in base64 plus JSON fits comfortably
RECV_SIZE = 1 << 16

Reply = dict[str, Any]


class ControlError(Exception):
    """The control server refused a request; the message says why."""


# --- request decoding -------------------------------------------------------------------------


def _int(req: dict[str, Any], key: str, default: int | None = None) -> int:
    value = req.get(key, default)
    if value is None:
        raise ValueError(f"missing '{key}'")
    if type(value) is not int:  # bool is an int subclass: refuse it explicitly
        raise ValueError(f"'{key}' must be an integer, got {value!r}")
    return value


def _opt_int(req: dict[str, Any], key: str) -> int | None:
    return None if req.get(key) is None else _int(req, key)


def _bytes(req: dict[str, Any], key: str) -> bytes:
    value = req.get(key)
    if not isinstance(value, str):
        raise ValueError(f"'{key}' must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except binascii.Error as e:
        raise ValueError(f"'{key}' is not valid base64: {e}") from None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# --- server -----------------------------------------------------------------------------------


class ControlServer:
    def __init__(self, device: Cx3Device, path: str | os.PathLike[str]) -> None:
        self.device = device
        self.path = os.fspath(path)
        if os.path.exists(self.path) and stat.S_ISSOCK(os.stat(self.path).st_mode):
            os.unlink(self.path)  # a stale socket from an earlier run
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(self.path)
        self._sock.listen()
        self._sock.setblocking(False)
        self._sel: selectors.BaseSelector | None = None
        self._conns: set[_Connection] = set()
        self._ops: dict[str, Callable[[dict[str, Any]], Reply]] = {
            "ping": lambda req: {"device": "cx3"},
            "state": lambda req: {"state": self.device.state()},
            "load_crspace": self._load_crspace,
            "set_health": self._set_health,
            "inject_catas": self._inject_catas,
            "fault_cmd_timeout": self._fault_cmd_timeout,
            "fault_closing_cmd": self._fault_closing_cmd,
            "clear_faults": self._clear_faults,
            "advertise_health": self._advertise_health,
            "read_bar0": self._read_bar0,
            "crdumps": self._crdumps,
            "crdump": self._crdump,
            "events": self._events,
        }

    def register(self, sel: selectors.BaseSelector) -> None:
        self._sel = sel
        sel.register(self._sock, selectors.EVENT_READ, self._accept)

    def close(self) -> None:
        for conn in list(self._conns):
            conn.close()
        if self._sel is not None:
            self._sel.unregister(self._sock)
        self._sock.close()
        if os.path.exists(self.path):
            os.unlink(self.path)

    def _accept(self) -> None:
        try:
            sock, _ = self._sock.accept()
        except OSError:  # the peer gave up between readiness and accept
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
            op = req.get("op")
            handler = self._ops.get(op) if isinstance(op, str) else None
            if handler is None:
                raise ValueError(f"unknown op {op!r}; known: {', '.join(self._ops)}")
            reply: Reply = {"ok": True, **handler(req)}
        except (ValueError, LookupError, TypeError) as e:  # JSONDecodeError is a ValueError
            reply = {"ok": False, "error": str(e) or type(e).__name__}
        except Exception as e:  # a model bug must not take the device's loop down
            reply = {"ok": False, "error": f"internal error: {e!r}"}
        return json.dumps(reply).encode() + b"\n"

    # --- operations ------------------------------------------------------------------------

    def _load_crspace(self, req: dict[str, Any]) -> Reply:
        self.device.load_crspace(_bytes(req, "image"))
        return {}

    def _set_health(self, req: dict[str, Any]) -> Reply:
        self.device.set_health(_bytes(req, "data"))
        return {}

    def _inject_catas(self, req: dict[str, Any]) -> Reply:
        words = req.get("words", list(DEFAULT_CATAS))
        if not isinstance(words, list) or any(type(w) is not int for w in words):
            raise ValueError("'words' must be a list of integers")
        self.device.inject_catas(tuple(words))
        return {}

    def _fault_cmd_timeout(self, req: dict[str, Any]) -> Reply:
        self.device.arm_cmd_timeout(_opt_int(req, "opcode"))
        return {}

    def _fault_closing_cmd(self, req: dict[str, Any]) -> Reply:
        self.device.arm_closing_cmd(_opt_int(req, "opcode"), _int(req, "status", 1))
        return {}

    def _advertise_health(self, req: dict[str, Any]) -> Reply:
        enabled = req.get("enabled")
        if not isinstance(enabled, bool):
            raise ValueError("'enabled' must be true or false")
        self.device.advertise_health(enabled)
        return {}

    def _clear_faults(self, req: dict[str, Any]) -> Reply:
        self.device.clear_faults()
        return {}

    def _read_bar0(self, req: dict[str, Any]) -> Reply:
        data = self.device.read_bar0(_int(req, "offset"), _int(req, "length"))
        return {"data": _b64(data)}

    def _crdumps(self, req: dict[str, Any]) -> Reply:
        return {"crdumps": [{"index": r.index, "t": r.t} for r in self.device.crdumps]}

    def _crdump(self, req: dict[str, Any]) -> Reply:
        r = self.device.crdumps.get(_int(req, "index"))
        return {"index": r.index, "t": r.t, "image": _b64(r.image), "health": _b64(r.health)}

    def _events(self, req: dict[str, Any]) -> Reply:
        return {
            "events": self.device.events.since(_int(req, "since", 0)),
            "next": self.device.events.next_index,
        }


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
                    error = {"ok": False, "error": f"request longer than {MAX_LINE} bytes"}
                    self._out += json.dumps(error).encode() + b"\n"
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


# --- client -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CrdumpInfo:
    index: int
    t: float


@dataclass(frozen=True)
class CrdumpData:
    index: int
    t: float
    image: bytes
    health: bytes


@dataclass(frozen=True)
class EventsPage:
    events: list[dict[str, Any]]
    next: int  # pass as `since` to get only newer events


class ControlClient:
    """Blocking client for the control socket; error replies raise `ControlError`."""

    def __init__(self, path: str | os.PathLike[str], timeout: float = 10.0) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        self._sock.connect(os.fspath(path))
        self._reader = self._sock.makefile("rb")

    def close(self) -> None:
        self._reader.close()
        self._sock.close()

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, op: str, **args: Any) -> Reply:
        """Send one raw request; returns the reply without "ok"."""
        self._sock.sendall(json.dumps({"op": op, **args}).encode() + b"\n")
        line = self._reader.readline(MAX_LINE)
        if not line.endswith(b"\n"):
            raise ConnectionError(f"control socket closed or reply too long during {op!r}")
        reply: Reply = json.loads(line)
        if not reply.pop("ok", False):
            raise ControlError(f"{op}: {reply.get('error', 'no error message')}")
        return reply

    def ping(self) -> None:
        self.call("ping")

    def state(self) -> dict[str, Any]:
        state: dict[str, Any] = self.call("state")["state"]
        return state

    def load_crspace(self, image: bytes) -> None:
        if len(image) != crspace.SIZE:  # fail before shipping 1.4 MB of base64
            raise ControlError(f"load_crspace: image must be {crspace.SIZE} bytes")
        self.call("load_crspace", image=_b64(image))

    def set_health(self, data: bytes) -> None:
        self.call("set_health", data=_b64(data))

    def inject_catas(self, words: tuple[int, ...] = DEFAULT_CATAS) -> None:
        self.call("inject_catas", words=list(words))

    def fault_cmd_timeout(self, opcode: int | None = None) -> None:
        self.call("fault_cmd_timeout", opcode=opcode)

    def fault_closing_cmd(self, opcode: int | None = None, status: int = 1) -> None:
        self.call("fault_closing_cmd", opcode=opcode, status=status)

    def clear_faults(self) -> None:
        self.call("clear_faults")

    def advertise_health(self, enabled: bool) -> None:
        """False: QUERY_DEV_CAP offers no health buffer from the next probe (or reload) on."""
        self.call("advertise_health", enabled=enabled)

    def read_bar0(self, offset: int, length: int) -> bytes:
        return base64.b64decode(self.call("read_bar0", offset=offset, length=length)["data"])

    def crdumps(self) -> list[CrdumpInfo]:
        return [CrdumpInfo(c["index"], c["t"]) for c in self.call("crdumps")["crdumps"]]

    def crdump(self, index: int) -> CrdumpData:
        r = self.call("crdump", index=index)
        image, health = base64.b64decode(r["image"]), base64.b64decode(r["health"])
        return CrdumpData(r["index"], r["t"], image, health)

    def events(self, since: int = 0) -> EventsPage:
        r = self.call("events", since=since)
        return EventsPage(r["events"], r["next"])
