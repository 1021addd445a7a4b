"""The HCR (host command register) protocol (cmd.c: mlx4_cmd_post, mlx4_cmd_poll).

Seven BE32 words at BAR0 0x80680. The driver fills +0x00..+0x14, then writes +0x18 with GO, its
toggle T, E (event mode), op_modifier and opcode. The device keeps T, executes, writes the
status into bits 31:24 and clears GO. The latched words live in CR-space itself, so a crdump
shows the last command exactly as the driver left it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from . import layout
from .crspace import CrSpace

IN_PARAM_H = 0x00
IN_PARAM_L = 0x04
IN_MODIFIER = 0x08
OUT_PARAM_H = 0x0C
OUT_PARAM_L = 0x10
TOKEN = 0x14
STATUS = 0x18  # status/GO/E/T/op_modifier/opcode
# (BAR0 offset, size) of the six words before STATUS: a write to them is only latched, so the
# client may post it (vfio_user.qemu.POSTED_BAR0_OFFSET); the GO word's write runs the command.
PARAMETERS = (layout.HCR_OFFSET + IN_PARAM_H, STATUS - IN_PARAM_H)

GO = 1 << 23
EVENT = 1 << 22
TOGGLE = 1 << 21

POLL_TOKEN = 0xFFFF


class Status(enum.IntEnum):
    """`cmd.c: enum CMD_STAT_*` (the subset this firmware answers with)."""

    OK = 0x00
    INTERNAL_ERR = 0x01
    BAD_OP = 0x02
    BAD_PARAM = 0x03
    BAD_SYS_STATE = 0x04
    BAD_RESOURCE = 0x05
    EXCEED_LIM = 0x08
    BAD_RES_STATE = 0x09
    BAD_INDEX = 0x0A
    ICM_ERROR = 0x0C
    BAD_QP_STATE = 0x10


class CommandFailed(Exception):
    """A command the firmware refuses: the status it answers with and why."""

    def __init__(self, status: Status, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Command:
    opcode: int
    op_modifier: int
    in_param: int
    in_modifier: int
    out_param: int
    token: int
    event: bool


class Hcr:
    def __init__(self, cr: CrSpace) -> None:
        self._cr = cr

    def _get(self, reg: int) -> int:
        return self._cr.word(layout.HCR_OFFSET + reg)

    def _set(self, reg: int, value: int) -> None:
        self._cr.set_word(layout.HCR_OFFSET + reg, value)

    @property
    def busy(self) -> bool:
        return bool(self._get(STATUS) & GO)

    def post(self, value: int) -> Command | None:
        """The driver wrote +0x18: latch it; return the command to run if GO is set."""
        self._set(STATUS, value & 0x00FFFFFF)  # status bits are the device's
        if not value & GO:
            return None
        return Command(
            opcode=value & 0xFFF,
            op_modifier=(value >> 12) & 0xF,
            in_param=self._get(IN_PARAM_H) << 32 | self._get(IN_PARAM_L),
            in_modifier=self._get(IN_MODIFIER),
            out_param=self._get(OUT_PARAM_H) << 32 | self._get(OUT_PARAM_L),
            token=self._get(TOKEN) >> 16,
            event=bool(value & EVENT),
        )

    def complete(self, status: int, out_imm: int | None) -> None:
        """Publish the result: immediate out_param first, then status with GO cleared."""
        if out_imm is not None:
            self._set(OUT_PARAM_H, out_imm >> 32)
            self._set(OUT_PARAM_L, out_imm & 0xFFFFFFFF)
        self._set(STATUS, (status & 0xFF) << 24 | (self._get(STATUS) & 0x00FFFFFF & ~GO))

    def reset(self) -> None:
        """Power-on state: everything 0, in particular T=0 (the driver starts with toggle 1)."""
        self._cr.fill(layout.HCR_OFFSET, layout.HCR_SIZE)
