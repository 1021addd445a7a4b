"""The control protocol on the wire: JSON lines, base64 payloads, typed arguments, records.

One request line `{"op": NAME, ...args}` gets one reply line, `{"ok": true, ...}` or
`{"ok": false, "error": "..."}`. Binary payloads travel as base64. Shared by the server (in
the device process) and the client (in the rig); imports nothing of the model.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

MAX_LINE = 4 << 20  # a 1 MiB CR-space image in base64 plus JSON fits comfortably

Request = dict[str, Any]
Reply = dict[str, Any]


def encode_line(message: dict[str, Any]) -> bytes:
    return json.dumps(message).encode() + b"\n"


def error_reply(message: str) -> Reply:
    return {"ok": False, "error": message}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(value: object, name: str) -> bytes:
    if not isinstance(value, str):
        raise ValueError(f"'{name}' must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except binascii.Error as e:
        raise ValueError(f"'{name}' is not valid base64: {e}") from None


# --- argument types: each checks a JSON value and turns a Python value into one -----------------


def _int(value: object, name: str) -> int:
    if type(value) is not int:  # bool is an int subclass: refuse it explicitly
        raise ValueError(f"'{name}' must be an integer, got {value!r}")
    return value


def _bool(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"'{name}' must be true or false")
    return value


def _words(value: object, name: str) -> tuple[int, ...]:
    if not isinstance(value, list) or any(type(w) is not int for w in value):
        raise ValueError(f"'{name}' must be a list of integers")
    return tuple(value)


#: Argument type -> the check that turns a JSON value into it (or raises ValueError).
#: `tuple` means a tuple of ints (catas words), a JSON list on the wire.
DECODERS: dict[type, Any] = {int: _int, bool: _bool, bytes: unb64, tuple: _words}


def to_json(value: object) -> object:
    if isinstance(value, bytes):
        return b64(value)
    if isinstance(value, tuple):
        return list(value)
    return value


# --- records ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Crdump:
    """BAR0 and the health buffer as the driver's crdump read them."""

    index: int
    t: float  # time.monotonic() in the device process, comparable with event timestamps
    image: bytes
    health: bytes

    def to_reply(self) -> Reply:
        image, health = b64(self.image), b64(self.health)
        return {"index": self.index, "t": self.t, "image": image, "health": health}

    @classmethod
    def from_reply(cls, reply: Reply) -> Crdump:
        image, health = unb64(reply["image"], "image"), unb64(reply["health"], "health")
        return cls(reply["index"], reply["t"], image, health)


@dataclass(frozen=True)
class CrdumpInfo:
    index: int
    t: float


@dataclass(frozen=True)
class EventsPage:
    events: list[dict[str, Any]]
    next: int  # pass as `since` to get only newer events
