"""Completion queues: the CQ context of SW2HW_CQ / MODIFY_CQ and the arm doorbell.

A CQ is a ring of CQEs in guest pages found through the MTT, like an EQ. Unless the driver
initialised the ring itself (SW2HW_CQ op_modifier 1, `MLX4_DEV_CAP_FLAG2_SW_CQ_INIT`), the
firmware hands it over hardware-owned (owner bit set), so a zeroed CQE never looks valid.
The arm doorbell (UAR page + 0x20, `mlx4_cq_arm`) asks for one completion event.

CQEs (`include/linux/mlx4/cq.h`: struct mlx4_cqe, mlx4_err_cqe) are 32 bytes; with 64-byte
CQEs the legacy entry is the upper half (`mlx4_en_get_cqe(...) + cqe_factor`). The driver owns
an entry when its owner bit equals the wrap parity of its consumer index (`XNOR` in
`mlx4_en_process_tx_cq`), so the device writes owner = (producer >> log_size) & 1 - body first,
owner byte last. The driver publishes its consumer index in the doorbell record
(`mlx4_cq_set_ci`: be32 at db_rec_addr); a CQE that would overwrite an unconsumed one is a CQ
overrun: the CQ stops completing and the firmware reports a CQ_ERROR event.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from .dma import GuestMemory

CONTEXT_SIZE = 0x40  # struct mlx4_cq_context
DOORBELL = 0x20  # within the UAR page: [sn << 28 | cmd | cqn, consumer index]
CQN_MASK = 0xFFFFFF
ARM_NEXT_SOLICITED = 1  # cmd >> 24: MLX4_CQ_DB_REQ_NOT_SOL
ARM_NEXT = 2  # MLX4_CQ_DB_REQ_NOT

CQE_SIZE = 32  # the legacy CQE
OWNER_BYTE = 31
OWNER_BIT = 0x80
IS_SEND = 0x40  # owner_sr_opcode: a send completion
OPCODE_ERROR = 0x1E  # MLX4_CQE_OPCODE_ERROR
CVLAN_PRESENT = 1 << 29  # vlan_my_qpn (MLX4_CQE_CVLAN_PRESENT_MASK): sl_vid holds the tag
INDEX_MASK = 0xFFFFFF

# mlx4_err_cqe syndromes (cq.h)
LOCAL_LENGTH_ERR = 0x01
LOCAL_QP_OP_ERR = 0x02
LOCAL_PROT_ERR = 0x04
WR_FLUSH_ERR = 0x05
OVERRUN = 1  # CQ_ERROR event syndrome (`eq.c`: 1 overrun, else access violation)

MODIFY_RESIZE = 0  # MODIFY_CQ op_modifiers (`cq.c`)
MODIFY_MODERATION = 1


@dataclass(frozen=True)
class CqContext:
    flags: int
    page_offset: int
    log_size: int
    uar: int
    period: int
    max_count: int
    comp_eqn: int
    log_page_size: int
    mtt_offset: int  # byte offset of the first MTT entry within the MTT table
    consumer: int
    producer: int
    db_rec_addr: int

    @classmethod
    def decode(cls, raw: bytes) -> CqContext:
        flags, page_offset, logsize_uar, period, max_count = struct.unpack_from(
            ">I6xHIHH", raw, 0x00
        )
        comp_eqn, log_page_size, mtt_h, mtt_l = struct.unpack_from(">BB2xBI", raw, 0x17)
        consumer, producer = struct.unpack_from(">II", raw, 0x28)
        (db_rec_addr,) = struct.unpack_from(">Q", raw, 0x38)
        return cls(
            flags=flags,
            page_offset=page_offset,
            log_size=(logsize_uar >> 24) & 0x1F,
            uar=logsize_uar & 0xFFFFFF,
            period=period,
            max_count=max_count,
            comp_eqn=comp_eqn,
            log_page_size=log_page_size & 0x1F,
            mtt_offset=mtt_h << 32 | mtt_l,
            consumer=consumer & 0xFFFFFF,
            producer=producer & 0xFFFFFF,
            db_rec_addr=db_rec_addr,
        )


@dataclass
class CompletionQueue:
    cqn: int
    ctx: CqContext
    cqe_size: int
    pages: list[int] = field(default_factory=list)
    consumer: int = 0  # as the last arm doorbell reported it
    arm: int = 0  # ARM_NEXT / ARM_NEXT_SOLICITED until the next completion event
    arm_sn: int = 0
    producer: int = 0  # CQEs written (24-bit counter)
    signalled: int = 0  # the producer index the last completion event covered
    overrun: bool = False  # in error since an overrun: completes nothing more
    overrun_reported: bool = False  # the CQ_ERROR event went out

    @property
    def nent(self) -> int:
        return 1 << self.ctx.log_size

    @property
    def page_size(self) -> int:
        return 4096 << self.ctx.log_page_size

    def buffer_pages(self) -> int:
        return -(-(self.nent * self.cqe_size) // self.page_size)

    def doorbell(self, word0: int, consumer: int) -> bool:
        """`mlx4_cq_arm`: remember the request until a completion consumes it. True when
        CQEs past `consumer` were written since the last event: the event is due at once
        (they arrived between the driver's last poll and this arm).

        A CQE is announced once. A driver may leave announced CQEs unpolled and arm again:
        mlx4_en's RX poll returns at once while its port is not up (en_rx.c), and
        mlx4_en_start_port schedules its NAPI polls itself once the port is — re-firing on
        every arm would make that an interrupt storm that never lets the port come up."""
        self.arm = (word0 >> 24) & 3
        self.arm_sn = (word0 >> 28) & 3
        self.consumer = consumer & INDEX_MASK
        unpolled = (self.producer - self.consumer) & INDEX_MASK
        if self.arm and 0 < unpolled <= self.nent and self.producer != self.signalled:
            self.arm = 0
            self.signalled = self.producer
            return True
        return False

    @property
    def cqe_offset(self) -> int:
        return 32 if self.cqe_size == 64 else 0

    def software_consumer(self, mem: GuestMemory) -> int:
        """The consumer index the driver last published in the doorbell record."""
        (ci,) = struct.unpack(">I", mem.read(self.ctx.db_rec_addr, 4))
        return int(ci) & INDEX_MASK

    def post(self, mem: GuestMemory, cqe: bytes) -> None:
        """Write one CQE (32 bytes; its owner bit is set here). Raises CqOverrun, DmaError."""
        if self.overrun:
            raise CqOverrun(f"CQ {self.cqn:#x} is in error after an overrun")
        pending = (self.producer - self.software_consumer(mem)) & INDEX_MASK
        if pending >= self.nent:
            self.overrun = True
            raise CqOverrun(f"CQ {self.cqn:#x} overrun: {pending} CQEs unconsumed")
        byte = (self.producer & (self.nent - 1)) * self.cqe_size + self.cqe_offset
        addr = self.pages[byte // self.page_size] + byte % self.page_size
        owner = OWNER_BIT if self.producer & self.nent else 0
        mem.write(addr, cqe[:OWNER_BYTE])  # body first: the owner byte hands it over
        mem.write(addr + OWNER_BYTE, bytes([(cqe[OWNER_BYTE] & ~OWNER_BIT) | owner]))
        self.producer = (self.producer + 1) & INDEX_MASK

    def take_event(self, solicited: bool) -> bool:
        """After a CQE: True if the arm request it satisfies asks for a completion event."""
        if self.arm == ARM_NEXT or (self.arm == ARM_NEXT_SOLICITED and solicited):
            self.arm = 0
            self.signalled = self.producer
            return True
        return False

    def describe(self) -> dict[str, int]:
        return {
            "cqn": self.cqn,
            "nent": self.nent,
            "comp_eqn": self.ctx.comp_eqn,
            "uar": self.ctx.uar,
            "arm": self.arm,
            "consumer": self.consumer,
            "producer": self.producer,
            "overrun": self.overrun,
        }


class CqOverrun(Exception):
    """A CQE the CQ has no room for."""


def send_cqe(qpn: int, wqe_index: int, opcode: int) -> bytes:
    """A successful send completion: the QP, the index of the WQE's first TXBB."""
    cqe = bytearray(CQE_SIZE)
    struct.pack_into(">I", cqe, 0x00, qpn & INDEX_MASK)
    struct.pack_into(">H", cqe, 0x18, wqe_index & 0xFFFF)
    cqe[OWNER_BYTE] = IS_SEND | opcode
    return bytes(cqe)


def recv_cqe(
    qpn: int,
    wqe_index: int,
    byte_count: int,
    opcode: int,
    rss_hash: int,
    cvlan: int | None,
    status: int = 0,
    checksum: int = 0,
) -> bytes:
    """A receive completion (`mlx4_en_process_rx_cq` reads byte_cnt, the RSS hash, the
    stripped C-VLAN, and the parser's status and checksum: `frame.rx_checksum`)."""
    cqe = bytearray(CQE_SIZE)
    vlan = 0 if cvlan is None else CVLAN_PRESENT
    struct.pack_into(">II", cqe, 0x00, vlan | qpn & INDEX_MASK, rss_hash & 0xFFFFFFFF)
    struct.pack_into(">HH", cqe, 0x0C, cvlan or 0, 0)
    struct.pack_into(">H", cqe, 0x10, status)
    struct.pack_into(">IHH", cqe, 0x14, byte_count, wqe_index & 0xFFFF, checksum)
    cqe[OWNER_BYTE] = opcode
    return bytes(cqe)


def error_cqe(qpn: int, wqe_index: int, syndrome: int, send: bool) -> bytes:
    """`struct mlx4_err_cqe`: opcode MLX4_CQE_OPCODE_ERROR with its syndrome."""
    cqe = bytearray(CQE_SIZE)
    struct.pack_into(">I", cqe, 0x00, qpn & INDEX_MASK)
    struct.pack_into(">HBB", cqe, 0x18, wqe_index & 0xFFFF, 0, syndrome)
    cqe[OWNER_BYTE] = (IS_SEND if send else 0) | OPCODE_ERROR
    return bytes(cqe)
