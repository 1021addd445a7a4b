"""Fault knobs, netdevsim style: plain switches the control interface flips.

Each knob is a method of `Faults` named after its entry in cx3/ops.py (KNOBS); the control
server calls it with that entry's arguments, and each logs one "fault" event. CR-space content
knobs (image, health buffer, catas words) write BAR0 directly. Command knobs are one-shot:
armed until the matching command arrives, then spent. An armed knob survives a device reset, so
it can target the next probe; the hung command it caused does not.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from . import layout, opcodes, ops
from .crspace import CrSpace
from .events import EventLog
from .firmware import Firmware
from .hcr import Status
from .layout import DEFAULT_CATAS


@dataclass
class CommandFault:
    opcode: int | None = None  # None: any (closing) command
    status: int = Status.INTERNAL_ERR

    def matches(self, opcode: int) -> bool:
        return self.opcode is None or self.opcode == opcode


class Faults:
    def __init__(
        self, cr: CrSpace, firmware: Firmware, events: EventLog, set_link: Callable[[bool], None]
    ) -> None:
        self._cr = cr
        self._firmware = firmware
        self._events = events
        self._set_link = set_link  # the cable: the device posts the PORT_CHANGE events
        self.armed_timeout: CommandFault | None = None
        self.armed_closing: CommandFault | None = None

    # --- CR-space content ------------------------------------------------------------------

    def load_crspace(self, image: bytes) -> None:
        if len(image) != layout.SIZE:
            raise ValueError(f"CR-space image must be {layout.SIZE} bytes, got {len(image)}")
        self._cr.load_image(image)
        self._events.add("fault", fault="load_crspace")

    def set_health(self, data: bytes) -> None:
        if len(data) != layout.HEALTH_SIZE:
            raise ValueError(f"health buffer must be {layout.HEALTH_SIZE} bytes, got {len(data)}")
        self._cr.store(layout.HEALTH_OFFSET, data)
        self._events.add("fault", fault="set_health")

    # --- knobs (cx3/ops.py KNOBS) ----------------------------------------------------------

    def catas(self, words: tuple[int, ...] = DEFAULT_CATAS) -> None:
        ops.check_catas_words(words)
        for i, word in enumerate(words):
            self._cr.set_word(layout.CATAS_OFFSET + 4 * i, word)
        self._events.add("fault", fault="catas", word0=words[0], words=len(words))

    def cmd_timeout(self, opcode: int | None = None) -> None:
        ops.check_opcode(opcode)
        self.armed_timeout = CommandFault(opcode)
        self._events.add("fault", fault="cmd_timeout", opcode=opcode)

    def closing_cmd(self, opcode: int | None = None, status: int = Status.INTERNAL_ERR) -> None:
        ops.check_closing_opcode(opcode)
        ops.check_status(status)
        self.armed_closing = CommandFault(opcode, status)
        self._events.add("fault", fault="closing_cmd", opcode=opcode, status=status)

    def advertise_health(self, enabled: bool) -> None:
        """Whether QUERY_DEV_CAP offers the health buffer (from the next probe on)."""
        self._firmware.health_buffer = enabled
        self._events.add("fault", fault="advertise_health", enabled=enabled)

    def link(self, up: bool) -> None:
        """Plug (True) or pull the cable; an open port's carrier follows within an event."""
        self._set_link(up)

    def clear(self) -> None:
        self.armed_timeout = None
        self.armed_closing = None
        self._events.add("fault", fault="clear")

    # --- the model's side ------------------------------------------------------------------

    def take_timeout(self, opcode: int) -> bool:
        """Should this command hang? Spends the knob if so."""
        if self.armed_timeout is None or not self.armed_timeout.matches(opcode):
            return False
        self.armed_timeout = None
        return True

    def take_closing_failure(self, opcode: int) -> int | None:
        """The status this closing command must fail with, if armed. Spends the knob."""
        fault = self.armed_closing
        if fault is None or opcode not in opcodes.CLOSING or not fault.matches(opcode):
            return None
        self.armed_closing = None
        return fault.status

    def describe(self) -> dict[str, dict[str, int | None] | None]:
        timeout, closing = self.armed_timeout, self.armed_closing
        return {
            "cmd_timeout": None if timeout is None else {"opcode": timeout.opcode},
            "closing_cmd": (
                None if closing is None else {"opcode": closing.opcode, "status": closing.status}
            ),
        }
