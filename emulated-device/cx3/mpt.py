"""Memory regions: the dMPT entries SW2HW_MPT hands to the hardware (`mr.c: mlx4_mr_enable`).

mlx4_en registers one physical region over all of memory (lkey = DMA address); mlx4_ib would
add MTT-backed ones. The model keeps every hardware-owned entry by its dMPT index.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

ENTRY_SIZE = 0x40  # struct mlx4_mpt_entry
FLAG_PHYSICAL = 1 << 9
STATUS_SW = 0xF  # flags[31:28]: 0 hardware-owned, 0xF software-owned


@dataclass(frozen=True)
class Mpt:
    index: int
    key: int  # in hardware order (`mr.c: key_to_hw_index`): the low bits are the index
    pd: int
    flags: int
    start: int
    length: int
    mtt_offset: int
    mtt_entries: int
    log_page_size: int
    raw: bytes

    @property
    def physical(self) -> bool:
        return bool(self.flags & FLAG_PHYSICAL)

    @classmethod
    def decode(cls, index: int, raw: bytes) -> Mpt:
        flags, _, key, pd_flags, start, length = struct.unpack_from(">IIIIQQ", raw, 0x00)
        mtt_offset, mtt_entries, entity_size = struct.unpack_from(">QII", raw, 0x2C)
        return cls(
            index=index,
            key=key,
            pd=pd_flags & 0xFFFFFF,
            flags=flags,
            start=start,
            length=length,
            mtt_offset=mtt_offset,
            mtt_entries=mtt_entries,
            log_page_size=entity_size & 0x1F,
            raw=raw,
        )
