"""Multicast groups: the MGM table of READ_MCG / WRITE_MCG and the MGID_HASH function.

The table (sizes from INIT_HCA) starts with `1 << log_mc_hash_size` hash buckets, each the head
of a chain through `next_gid_index` (`mcg.c: find_entry`). Entries the driver never wrote read
as zeros. Only B0 / IB steering uses it: with A0 steering mlx4_en attaches nothing here.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field

from .hcr import CommandFailed, Status

GID_SIZE = 16
HEADER_SIZE = 0x20  # next_gid_index, members_count, reserved, gid; then the QP list
MEMBERS_MASK = 0xFFFFFF


@dataclass
class McgTable:
    log_entry_size: int
    log_hash_size: int
    log_table_size: int
    entries: dict[int, bytes] = field(default_factory=dict)

    @property
    def entry_size(self) -> int:
        return 1 << self.log_entry_size

    def hash(self, gid: bytes) -> int:
        return zlib.crc32(gid) & ((1 << self.log_hash_size) - 1)

    def _check_index(self, index: int) -> None:
        if index >= 1 << self.log_table_size:
            raise CommandFailed(
                Status.BAD_INDEX, f"MCG {index:#x} is outside 0..{1 << self.log_table_size}"
            )

    def read(self, index: int) -> bytes:
        self._check_index(index)
        return self.entries.get(index, bytes(self.entry_size))

    def write(self, index: int, raw: bytes) -> None:
        self._check_index(index)
        next_gid, members = struct.unpack_from(">II", raw, 0)
        capacity = (self.entry_size - HEADER_SIZE) // 4
        if members & MEMBERS_MASK > capacity:
            raise CommandFailed(
                Status.BAD_PARAM,
                f"MCG {index:#x}: {members & MEMBERS_MASK} members, room for {capacity}",
            )
        if next_gid >> 6:
            self._check_index(next_gid >> 6)
        self.entries[index] = bytes(raw[: self.entry_size])
