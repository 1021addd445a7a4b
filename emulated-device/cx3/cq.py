"""Completion queues: the CQ context of SW2HW_CQ / MODIFY_CQ and the arm doorbell.

A CQ is a ring of CQEs in guest pages found through the MTT, like an EQ. Unless the driver
initialised the ring itself (SW2HW_CQ op_modifier 1, `MLX4_DEV_CAP_FLAG2_SW_CQ_INIT`), the
firmware hands it over hardware-owned (owner bit set), so a zeroed CQE never looks valid.
The arm doorbell (UAR page + 0x20, `mlx4_cq_arm`) asks for one completion event.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

CONTEXT_SIZE = 0x40  # struct mlx4_cq_context
DOORBELL = 0x20  # within the UAR page: [sn << 28 | cmd | cqn, consumer index]
CQN_MASK = 0xFFFFFF
ARM_NEXT_SOLICITED = 1  # cmd >> 24: MLX4_CQ_DB_REQ_NOT_SOL
ARM_NEXT = 2  # MLX4_CQ_DB_REQ_NOT

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

    @property
    def nent(self) -> int:
        return 1 << self.ctx.log_size

    @property
    def page_size(self) -> int:
        return 4096 << self.ctx.log_page_size

    def buffer_pages(self) -> int:
        return -(-(self.nent * self.cqe_size) // self.page_size)

    def doorbell(self, word0: int, consumer: int) -> None:
        """`mlx4_cq_arm`: remember the request until a completion consumes it."""
        self.arm = (word0 >> 24) & 3
        self.arm_sn = (word0 >> 28) & 3
        self.consumer = consumer & 0xFFFFFF

    def describe(self) -> dict[str, int]:
        return {
            "cqn": self.cqn,
            "nent": self.nent,
            "comp_eqn": self.ctx.comp_eqn,
            "uar": self.ctx.uar,
            "arm": self.arm,
            "consumer": self.consumer,
        }
