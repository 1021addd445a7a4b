"""Fault knobs, netdevsim style: plain switches the control interface flips.

CR-space content knobs (image, health buffer, catas words) write BAR0 directly. Command knobs
are one-shot: armed until the matching command arrives, then spent. An armed knob survives a
device reset, so it can target the next probe; the hung command it caused does not.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import crspace, opcodes
from .crspace import CrSpace
from .hcr import Status

DEFAULT_CATAS = (0x0FFFFFFF,)  # what the NVIDIA reset-flow documentation shows in buf[00]


@dataclass
class CommandFault:
    opcode: int | None = None  # None: any (closing) command
    status: int = Status.INTERNAL_ERR

    def matches(self, opcode: int) -> bool:
        return self.opcode is None or self.opcode == opcode


class Faults:
    def __init__(self, cr: CrSpace) -> None:
        self._cr = cr
        self.cmd_timeout: CommandFault | None = None
        self.closing_cmd: CommandFault | None = None

    # --- CR-space content ------------------------------------------------------------------

    def load_crspace(self, image: bytes) -> None:
        if len(image) != crspace.SIZE:
            raise ValueError(f"CR-space image must be {crspace.SIZE} bytes, got {len(image)}")
        self._cr.load_image(image)

    def set_health(self, data: bytes) -> None:
        if len(data) != crspace.HEALTH_SIZE:
            raise ValueError(f"health buffer must be {crspace.HEALTH_SIZE} bytes, got {len(data)}")
        self._cr.store(crspace.HEALTH_OFFSET, data)

    def inject_catas(self, words: tuple[int, ...] = DEFAULT_CATAS) -> None:
        if not 1 <= len(words) <= crspace.CATAS_DWORDS:
            raise ValueError(f"catas takes 1..{crspace.CATAS_DWORDS} words, got {len(words)}")
        if any(not 0 <= w <= 0xFFFFFFFF for w in words):
            raise ValueError("catas words must be 32-bit unsigned values")
        for i, word in enumerate(words):
            self._cr.set_word(crspace.CATAS_OFFSET + 4 * i, word)

    # --- commands --------------------------------------------------------------------------

    def arm_cmd_timeout(self, opcode: int | None = None) -> None:
        _check_opcode(opcode)
        self.cmd_timeout = CommandFault(opcode)

    def arm_closing_cmd(self, opcode: int | None = None, status: int = Status.INTERNAL_ERR) -> None:
        _check_opcode(opcode)
        if opcode is not None and opcode not in opcodes.CLOSING:
            raise ValueError(f"{opcodes.name(opcode)} is not a closing command")
        if not 1 <= status <= 0xFF:
            raise ValueError(f"closing-command status must be 1..255, got {status}")
        self.closing_cmd = CommandFault(opcode, status)

    def clear(self) -> None:
        self.cmd_timeout = None
        self.closing_cmd = None

    def take_timeout(self, opcode: int) -> bool:
        """Should this command hang? Spends the knob if so."""
        if self.cmd_timeout is None or not self.cmd_timeout.matches(opcode):
            return False
        self.cmd_timeout = None
        return True

    def take_closing_failure(self, opcode: int) -> int | None:
        """The status this closing command must fail with, if armed. Spends the knob."""
        fault = self.closing_cmd
        if fault is None or opcode not in opcodes.CLOSING or not fault.matches(opcode):
            return None
        self.closing_cmd = None
        return fault.status

    def describe(self) -> dict[str, dict[str, int | None] | None]:
        timeout, closing = self.cmd_timeout, self.closing_cmd
        return {
            "cmd_timeout": None if timeout is None else {"opcode": timeout.opcode},
            "closing_cmd": (
                None if closing is None else {"opcode": closing.opcode, "status": closing.status}
            ),
        }


def _check_opcode(opcode: int | None) -> None:
    if opcode is not None and not 0 <= opcode <= 0xFFF:
        raise ValueError(f"opcode must be 0..0xfff, got {opcode:#x}")
