"""Queue pairs: the QP state machine of the *2*_QP commands and the QP context they carry.

Every QP number starts in RST. Each transition command names the states it may leave
(`qp.c: __mlx4_qp_modify`'s op table); from any other state the firmware answers BAD_QP_STATE
and the QP stays where it was. 2RST and 2ERR work from every state. The inbox is the optional
parameter mask (be32 at 0) and the context at +8; RST2INIT's context is the one the model keeps.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field

from .icm import MttBuffer
from .opcodes import Opcode

CONTEXT_OFFSET = 8  # after the optpar word and a reserved one
CONTEXT_SIZE = 0xF8  # struct mlx4_qp_context
QPN_MASK = 0xFFFFFF
SEND_DOORBELL = 0x14  # within the UAR page: qpn << 8
RSS_FLAG = 1 << 13  # flags: the QP is an RSS indirection QP (MLX4_RSS_QPC_FLAG_OFFSET)


class QpState(enum.IntEnum):
    RST = 0
    INIT = 1
    RTR = 2
    RTS = 3
    SQER = 4
    SQD = 5
    ERR = 6


ANY = frozenset(QpState)

#: opcode -> (states it may start from, state it leaves the QP in)
TRANSITIONS: dict[int, tuple[frozenset[QpState], QpState]] = {
    Opcode.RST2INIT_QP: (frozenset({QpState.RST}), QpState.INIT),
    Opcode.INIT2INIT_QP: (frozenset({QpState.INIT}), QpState.INIT),
    Opcode.INIT2RTR_QP: (frozenset({QpState.INIT}), QpState.RTR),
    Opcode.RTR2RTS_QP: (frozenset({QpState.RTR}), QpState.RTS),
    Opcode.RTS2RTS_QP: (frozenset({QpState.RTS}), QpState.RTS),
    Opcode.SQERR2RTS_QP: (frozenset({QpState.SQER}), QpState.RTS),
    Opcode.RTS2SQD_QP: (frozenset({QpState.RTS}), QpState.SQD),
    Opcode.SQD2SQD_QP: (frozenset({QpState.SQD}), QpState.SQD),
    Opcode.SQD2RTS_QP: (frozenset({QpState.SQD}), QpState.RTS),
    Opcode.TO_ERR_QP: (ANY, QpState.ERR),
    Opcode.TO_RST_QP: (ANY, QpState.RST),
}


@dataclass(frozen=True)
class QpContext:
    state: int
    service_type: int
    pd: int
    rq_size_stride: int
    sq_size_stride: int
    uar: int
    local_qpn: int
    sched_queue: int
    cqn_send: int
    cqn_recv: int
    srqn: int
    db_rec_addr: int
    param3: int
    log_page_size: int
    mtt_offset: int  # byte offset of the first MTT entry within the MTT table
    rss: bool
    raw: bytes

    @classmethod
    def decode(cls, raw: bytes) -> QpContext:
        flags, pd, _, rq, sq, _, usr_page, local_qpn = struct.unpack_from(">IIBBBBII", raw, 0)
        (cqn_send,) = struct.unpack_from(">I", raw, 0x7C)
        cqn_recv, db_rec_addr, _, srqn = struct.unpack_from(">IQII", raw, 0x9C)
        (param3,) = struct.unpack_from(">I", raw, 0xC0)
        log_page_size, mtt_h, mtt_l = struct.unpack_from(">B2xBI", raw, 0xC8)
        return cls(
            state=flags >> 28,
            service_type=(flags >> 16) & 0xFF,
            pd=pd & 0xFFFFFF,
            rq_size_stride=rq,
            sq_size_stride=sq,
            uar=usr_page & 0xFFFFFF,
            local_qpn=local_qpn & QPN_MASK,
            sched_queue=raw[0x18 + 0x20],  # pri_path.sched_queue
            cqn_send=cqn_send & 0xFFFFFF,
            cqn_recv=cqn_recv & 0xFFFFFF,
            srqn=srqn & 0xFFFFFF,
            db_rec_addr=db_rec_addr,
            param3=param3,
            log_page_size=log_page_size & 0x1F,
            mtt_offset=mtt_h << 32 | mtt_l,
            rss=bool(flags & RSS_FLAG),
            raw=raw,
        )

    def queue_log_size(self, size_stride: int) -> int:
        """log2 of the number of WQEs of the receive or send queue (`rq/sq_size_stride`)."""
        return (size_stride >> 3) & 0x1F

    @property
    def port(self) -> int:
        """`mlx4_en_fill_qp_context`: sched_queue = 0x83 | (port - 1) << 6."""
        return (self.sched_queue >> 6 & 1) + 1

    def work_queues(self) -> tuple[WorkQueue, WorkQueue]:
        """(send queue, receive queue) within the QP buffer: the queue with the larger stride
        comes first, the send queue on a tie (hence mlx4_en's RX rings start one 64-byte TXBB
        into their buffer: `mlx4_en_activate_rx_rings`)."""
        sq_log, sq_shift = self.queue_log_size(self.sq_size_stride), (self.sq_size_stride & 7) + 4
        rq_log, rq_shift = self.queue_log_size(self.rq_size_stride), (self.rq_size_stride & 7) + 4
        if rq_shift > sq_shift:
            rq_offset, sq_offset = 0, 1 << (rq_log + rq_shift)
        else:
            sq_offset, rq_offset = 0, 1 << (sq_log + sq_shift)
        return WorkQueue(sq_offset, sq_log, sq_shift), WorkQueue(rq_offset, rq_log, rq_shift)


@dataclass(frozen=True)
class WorkQueue:
    """One queue of a QP's buffer: where it starts, 2^log_count WQEs of 2^log_stride bytes."""

    offset: int
    log_count: int
    log_stride: int

    @property
    def count(self) -> int:
        return 1 << self.log_count

    @property
    def size(self) -> int:
        return 1 << (self.log_count + self.log_stride)


@dataclass
class QueuePair:
    qpn: int
    state: QpState
    ctx: QpContext
    buffer: MttBuffer | None = field(default=None, repr=False)  # found on first use
    sq_next: int = 0  # the next send TXBB (64-byte unit) the device reads, a running count
    rq_next: int = 0  # the next receive WQE (16-bit running count, like the doorbell record)
    sending: bool = False  # a walk of the send queue is under way (one per QP)

    def describe(self) -> dict[str, int | str | bool]:
        return {
            "qpn": self.qpn,
            "state": self.state.name,
            "cqn_send": self.ctx.cqn_send,
            "cqn_recv": self.ctx.cqn_recv,
            "rss": self.ctx.rss,
            "port": self.ctx.port,
            "sq_next": self.sq_next,
            "rq_next": self.rq_next,
        }
