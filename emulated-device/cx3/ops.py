"""The control protocol's operations: one entry per op, naming its arguments and what it does.

The server decodes a request's arguments from the entry and dispatches it; the client encodes
a call from it; the rig's CLI builds `rig fault <knob>` from the knob entries. A fault knob is
an op made by `knob()` below: the server calls the method of the same name on the model's `Faults`
(cx3/faults.py), with the entry's arguments as keywords. Adding a knob is one entry in KNOBS
and that method. The range of each knob's values is checked here (`Arg.check`), for the
server, the model and the rig's CLI alike. Imports nothing of the model but its opcode table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import opcodes
from .layout import CATAS_DWORDS, DEFAULT_CATAS
from .wire import DECODERS, Request, to_json


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()


# --- what a knob's values may be: one home for the server, the model and the rig's CLI ------


def check_catas_words(words: tuple[int, ...]) -> None:
    if not 1 <= len(words) <= CATAS_DWORDS:
        raise ValueError(f"catas takes 1..{CATAS_DWORDS} words, got {len(words)}")
    if any(not 0 <= w <= 0xFFFFFFFF for w in words):
        raise ValueError("catas words must be 32-bit unsigned values (0..0xffffffff)")


def check_opcode(opcode: int | None) -> None:
    if opcode is not None and not 0 <= opcode <= 0xFFF:
        raise ValueError(f"opcode must be 0..0xfff, got {opcode:#x}")


def check_closing_opcode(opcode: int | None) -> None:
    check_opcode(opcode)
    if opcode is not None and opcode not in opcodes.CLOSING:
        closing = ", ".join(f"{o:#x} {o.name}" for o in sorted(opcodes.CLOSING))
        raise ValueError(
            f"{opcodes.name(opcode)} is not a closing command (closing commands: {closing})"
        )


def check_status(status: int) -> None:
    if not 1 <= status <= 0xFF:
        raise ValueError(f"closing-command status must be 1..255, got {status}")


@dataclass(frozen=True)
class Arg:
    name: str
    type: type  # int, bool, bytes (base64 on the wire) or tuple (of ints; a JSON list)
    default: Any = REQUIRED  # None: the argument may be left out or null
    help: str = ""
    check: Callable[[Any], None] | None = None  # raises ValueError for a value out of range

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def decode(self, req: Request) -> Any:
        """This argument from a request; absent or null means the default."""
        value = req.get(self.name)
        if value is None:
            if self.required:
                raise ValueError(f"missing '{self.name}'")
            return self.default
        value = DECODERS[self.type](value, self.name)
        if self.check is not None:
            self.check(value)
        return value


@dataclass(frozen=True)
class Op:
    name: str
    help: str  # one line
    args: tuple[Arg, ...] = ()
    knob: bool = False  # a fault knob: dispatched to Faults.<name>
    note: str = ""  # for a knob: what to expect once it is set (the CLI prints it)

    @property
    def cli_name(self) -> str:
        return self.name.replace("_", "-")

    def decode(self, req: Request) -> dict[str, Any]:
        return {arg.name: arg.decode(req) for arg in self.args}

    def request(self, **values: Any) -> Request:
        """The request line's object for a call with these arguments (omitted: the default)."""
        known = {arg.name for arg in self.args}
        unknown = sorted(set(values) - known)
        if unknown:
            raise TypeError(f"{self.name} takes no argument {', '.join(map(repr, unknown))}")
        return {"op": self.name, **{k: to_json(v) for k, v in values.items() if v is not None}}


def knob(name: str, help: str, *args: Arg, note: str = "") -> Op:
    return Op(name, help, args, knob=True, note=note)


_RELOAD = "try `rig devlink dev reload ...`"

KNOBS = (
    knob(
        "catas",
        "write words into the catas (internal-error) buffer",
        Arg("words", tuple, DEFAULT_CATAS, "catas buffer dwords", check_catas_words),
        note="the driver's catas poll finds it within ~5 s",
    ),
    knob(
        "cmd_timeout",
        "the next firmware command (or the next with this opcode) never completes",
        Arg("opcode", int, None, "only a command with this opcode (default: any)", check_opcode),
        note=f"{_RELOAD}; the driver gives up on the command after 60 s",
    ),
    knob(
        "closing_cmd",
        "the next closing command (or the next with this opcode) fails",
        Arg(
            "opcode",
            int,
            None,
            "only the closing command with this opcode (default: any)",
            check_closing_opcode,
        ),
        Arg(
            "status",
            int,
            1,
            "the firmware status it fails with, 1..255 (1: INTERNAL_ERR)",
            check_status,
        ),
        note=_RELOAD,
    ),
    knob(
        "advertise_health",
        "whether QUERY_DEV_CAP offers the health buffer (read at probe)",
        Arg("enabled", bool, help="offer it (false: the driver skips crdump)"),
        note=f"takes effect at the next probe: {_RELOAD}",
    ),
    knob(
        "link",
        "plug or pull the cable between the card's two ports: both ends' carrier follows",
        Arg("up", bool, help="plug it in (false: pull it)"),
        note="the driver sees the PORT_CHANGE event at once: `ip monitor link` in the guest",
    ),
    knob("clear", "disarm the command faults (cmd-timeout, closing-cmd)"),
)

OPS = (
    Op("ping", "is the device model there"),
    Op("state", "firmware, queue, fault and counter state"),
    Op("load_crspace", "replace BAR0's content (live registers kept)", (Arg("image", bytes),)),
    Op("set_health", "replace the health buffer", (Arg("data", bytes),)),
    Op("read_bar0", "read BAR0 as the guest sees it", (Arg("offset", int), Arg("length", int))),
    Op("crdumps", "the crdump records kept: index and time"),
    Op("crdump", "one crdump record: BAR0 and the health buffer", (Arg("index", int),)),
    Op("events", "the event log from index `since` on", (Arg("since", int, 0),)),
    *KNOBS,
)

BY_NAME = {op.name: op for op in OPS}
