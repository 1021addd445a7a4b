"""Event queues: the EQ context, EQE format, ownership, arming and doorbells
(drivers/net/ethernet/mellanox/mlx4/eq.c).

An EQ is a ring of `nent` EQEs in guest pages. The driver treats an entry as valid when its
owner bit equals the wrap parity of its consumer index (`eq.c: next_eqe_sw`), so the device
writes owner = (producer >> log2(nent)) & 1 and pre-fills the ring as hardware-owned.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .dma import GuestMemory

EQE_SIZE = 32  # the legacy EQE; larger strides keep it at the start (or +32 for 64-byte EQEs)
OWNER_BYTE = 31
OWNER_BIT = 0x80
HW_FILL = 0xCC  # the firmware's init pattern: owner bit set -> hardware-owned on pass 0

EVENT_COMP = 0x00  # completion on a CQ
EVENT_CQ_ERROR = 0x04
EVENT_CMD = 0x0A  # command completion
EVENT_PORT_CHANGE = 0x09
PORT_DOWN, PORT_ACTIVE = 1, 4  # PORT_CHANGE subtypes (`MLX4_PORT_CHANGE_SUBTYPE_*`)

STATE_ARMED = 0x9
STATE_ALWAYS_ARMED = 0xB

CONTEXT_SIZE = 0x40
INDEX_MASK = 0xFFFFFF  # doorbells carry 24-bit consumer indexes
MAX_BUFFER = 16 << 20  # refuse EQs larger than this (the driver's largest is 2 MiB)

BAR2_DOORBELL = 0x800  # within each UAR page: 4 EQ doorbells, 8 bytes apart
UAR_PAGE = 4096


class EqError(Exception):
    """An EQ context the model refuses."""


@dataclass(frozen=True)
class EqContext:
    """`struct mlx4_eq_context` as SW2HW_EQ passes it."""

    state: int
    page_offset: int
    log_nent: int
    intr: int
    log_page_size: int
    mtt_offset: int  # byte offset of the first MTT entry within the MTT table
    consumer: int
    producer: int

    @classmethod
    def decode(cls, raw: bytes) -> EqContext:
        flags, page_offset, log_nent = struct.unpack_from(">I6xHB", raw, 0x00)
        intr, log_page_size, mtt_h, mtt_l = struct.unpack_from(">BB2xBI", raw, 0x17)
        consumer, producer = struct.unpack_from(">II", raw, 0x28)
        return cls(
            state=(flags >> 8) & 0xF,
            page_offset=page_offset,
            log_nent=log_nent & 0x1F,
            intr=intr,
            log_page_size=log_page_size & 0x1F,
            mtt_offset=mtt_h << 32 | mtt_l,
            consumer=consumer & INDEX_MASK,
            producer=producer & INDEX_MASK,
        )


def command_eqe(token: int, status: int, out_param: int) -> bytes:
    """Type 0x0a EQE (`struct mlx4_eqe`, event.cmd), owner byte excluded (31 bytes)."""
    eqe = bytearray(OWNER_BYTE)
    eqe[0x01] = EVENT_CMD
    struct.pack_into(">H", eqe, 0x06, token)
    eqe[0x0F] = status
    struct.pack_into(">Q", eqe, 0x10, out_param)
    return bytes(eqe)


def completion_eqe(cqn: int) -> bytes:
    """Type 0x00 EQE: event.comp.cqn (`eq.c: mlx4_cq_completion`)."""
    eqe = bytearray(OWNER_BYTE)
    eqe[0x01] = EVENT_COMP
    struct.pack_into(">I", eqe, 0x04, cqn & INDEX_MASK)
    return bytes(eqe)


def cq_error_eqe(cqn: int, syndrome: int) -> bytes:
    """Type 0x04 EQE: event.cq_err (cqn, then the syndrome in its 12th byte)."""
    eqe = bytearray(OWNER_BYTE)
    eqe[0x01] = EVENT_CQ_ERROR
    struct.pack_into(">I", eqe, 0x04, cqn & INDEX_MASK)
    eqe[0x0F] = syndrome
    return bytes(eqe)


def port_change_eqe(port: int, up: bool) -> bytes:
    """Type 0x09 EQE (`eq.c: mlx4_eq_int`): the port in bits 31:28 of event.port_change.port."""
    eqe = bytearray(OWNER_BYTE)
    eqe[0x01] = EVENT_PORT_CHANGE
    eqe[0x03] = PORT_ACTIVE if up else PORT_DOWN
    struct.pack_into(">I", eqe, 0x0C, port << 28)
    return bytes(eqe)


def doorbell_eqn(bar2_offset: int) -> int | None:
    """The EQ whose doorbell sits at this BAR2 offset (`eq.c: mlx4_get_eq_uar`), if any."""
    in_page = bar2_offset % UAR_PAGE - BAR2_DOORBELL
    if in_page < 0 or in_page >= 32 or in_page % 8:
        return None
    return bar2_offset // UAR_PAGE * 4 + in_page // 8


@dataclass
class EventQueue:
    eqn: int
    log_nent: int
    eqe_size: int
    eqe_offset: int  # where the legacy EQE sits within its slot (32 for 64-byte EQEs)
    page_size: int
    pages: list[int]
    intr: int
    producer: int = 0
    consumer: int = 0
    armed: bool = False
    always_armed: bool = False

    @property
    def nent(self) -> int:
        return 1 << self.log_nent

    @property
    def pending(self) -> int:
        return (self.producer - self.consumer) & INDEX_MASK

    def buffer_pages(self) -> int:
        return -(-(self.nent * self.eqe_size) // self.page_size)

    def fill_hw_owned(self, mem: GuestMemory) -> None:
        mem.fill(self.pages, self.page_size, len(self.pages) * self.page_size, HW_FILL)

    def _slot_address(self, index: int) -> int:
        byte = (index & (self.nent - 1)) * self.eqe_size
        page = self.pages[byte // self.page_size]
        return page + (byte + self.eqe_offset) % self.page_size

    def post(self, mem: GuestMemory, eqe: bytes) -> bool:
        """Write one EQE; True if it should raise this EQ's interrupt. Raises DmaError, EqError."""
        if self.pending >= self.nent:
            raise EqError(f"EQ {self.eqn} overrun: {self.pending} entries unconsumed")
        addr = self._slot_address(self.producer)
        owner = OWNER_BIT if (self.producer >> self.log_nent) & 1 else 0
        mem.write(addr, eqe)  # body first: the owner byte is what hands it to the driver
        mem.write(addr + OWNER_BYTE, bytes([owner]))
        self.producer = (self.producer + 1) & INDEX_MASK
        if self.always_armed:
            return True
        fire, self.armed = self.armed, False
        return fire

    def doorbell(self, value: int) -> bool:
        """`eq_set_ci`: new consumer index, bit 31 requests a notification. True = fire now."""
        self.consumer = value & INDEX_MASK
        if not value >> 31:
            return False
        if self.pending:
            return True  # unconsumed entries: interrupt at once instead of arming
        self.armed = True
        return False
