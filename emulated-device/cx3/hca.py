"""INIT_HCA: where the driver put each context table in ICM, and how big the tables are.

`fw.c: mlx4_INIT_HCA` writes one 0x200-byte inbox; the firmware keeps it (QUERY_HCA answers
with it) and checks every resource number against the table sizes it names. A table base shares
its be64 with the table's log size in the low byte (the bases are page aligned).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import NamedTuple

from . import eq
from .hcr import CommandFailed, Status
from .icm import IcmError, IcmMap

INIT_HCA_SIZE = 0x200

# Entry sizes the firmware advertises in QUERY_DEV_CAP (caps._DEV_CAP_ENTRY_SIZES).
QPC_ENTRY = 256
CQC_ENTRY = 64
DMPT_ENTRY = 64
CQE_SIZE = 32


class Table(NamedTuple):
    """A context table in ICM: what it holds, how many entries, where, how big each is."""

    name: str
    log_count: int
    base: int
    entry_size: int


@dataclass(frozen=True)
class HcaParams:
    raw: bytes
    eqe_size: int
    eqe_offset: int  # where the legacy EQE sits in its slot (32 for 64-byte EQEs)
    cqe_size: int
    qpc_base: int
    log_num_qps: int
    cqc_base: int
    log_num_cqs: int
    mc_base: int
    log_mc_entry_size: int
    log_mc_hash_size: int
    log_mc_table_size: int
    dmpt_base: int
    log_num_mpts: int
    mtt_base: int

    @classmethod
    def decode(cls, raw: bytes) -> HcaParams:
        def base(off: int) -> int:
            return int(struct.unpack_from(">Q", raw, off)[0]) & ~0xFF

        (flags,) = struct.unpack_from(">I", raw, 0x058)
        stride = raw[0x05B]
        if stride:  # EQE/CQE stride: the legacy entry starts the slot
            eqe_size, eqe_offset = 1 << (((stride >> 4) & 7) + 5), 0
            cqe_size = 1 << ((stride & 7) + 5)
        else:  # 64-byte entries: the legacy EQE is the upper half
            eqe_size, eqe_offset = (64, 32) if flags & 1 << 29 else (eq.EQE_SIZE, 0)
            cqe_size = 64 if flags & 1 << 30 else CQE_SIZE
        (mc_entry, mc_hash) = struct.unpack_from(">H2xH", raw, 0x0D2)
        return cls(
            raw=raw,
            eqe_size=eqe_size,
            eqe_offset=eqe_offset,
            cqe_size=cqe_size,
            qpc_base=base(0x030),
            log_num_qps=raw[0x037] & 0x1F,
            cqc_base=base(0x050),
            log_num_cqs=raw[0x057] & 0x1F,
            mc_base=struct.unpack_from(">Q", raw, 0x0C0)[0],
            log_mc_entry_size=mc_entry & 0x1F,
            log_mc_hash_size=mc_hash & 0x1F,
            log_mc_table_size=raw[0x0DB] & 0x1F,
            dmpt_base=struct.unpack_from(">Q", raw, 0x0F0)[0],
            log_num_mpts=raw[0x0FB] & 0x3F,
            mtt_base=struct.unpack_from(">Q", raw, 0x100)[0],
        )

    @property
    def qp_table(self) -> Table:
        return Table("QP", self.log_num_qps, self.qpc_base, QPC_ENTRY)

    @property
    def cq_table(self) -> Table:
        return Table("CQ", self.log_num_cqs, self.cqc_base, CQC_ENTRY)

    @property
    def mpt_table(self) -> Table:
        return Table("MPT", self.log_num_mpts, self.dmpt_base, DMPT_ENTRY)


def check_index(table: Table, number: int) -> None:
    if number >= 1 << table.log_count:
        raise CommandFailed(
            Status.BAD_INDEX, f"{table.name} {number:#x} is outside 0..{1 << table.log_count}"
        )


def check_context(icm: IcmMap, table: Table, number: int) -> None:
    """A resource number must fit its table, and its context entry must be in mapped ICM."""
    check_index(table, number)
    try:
        icm.translate(table.base + number * table.entry_size)
    except IcmError as e:
        raise CommandFailed(Status.ICM_ERROR, f"{table.name} {number:#x}: {e}") from None
