"""How much of CR-space the user's dump covered, and what the snapshot did with it.

A partial dump (mstregdump reads ~14% of the BAR) is completed from the built-in image before
it is loaded; these figures count only the dwords the dump gave. A dword is covered when the
dump gave any of its bytes; it is equal when the device's capture holds it unchanged,
explained when every change in it is a register's (rig.formats.registers), else unexplained.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

from rig.formats.registers import Change

Range = tuple[int, int]  # (offset, length)

_EXPLAINED, _UNEXPLAINED = 1, 2


@dataclass(frozen=True)
class Coverage:
    covered_dwords: int
    region_dwords: int
    equal: int
    explained: int
    unexplained: int

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    def summary(self) -> str:
        share = 100 * self.covered_dwords / self.region_dwords
        return (
            f"{self.covered_dwords} of {self.region_dwords} dwords ({share:.1f}%) from the "
            f"input: {self.equal} equal, {self.explained} explained, "
            f"{self.unexplained} unexplained"
        )


def coverage(covered: Iterable[Range], size: int, changes: Iterable[Change]) -> Coverage:
    """The figures over the `covered` ranges of a `size`-byte region, given the runs where
    the capture differs from the loaded image (rig.formats.registers.explain)."""
    mask = bytearray(size // 4)
    for start, length in covered:
        first, end = start // 4, (start + length + 3) // 4
        mask[first:end] = b"\x01" * (end - first)
    status: dict[int, int] = {}
    for change in changes:
        kind = _EXPLAINED if change.register else _UNEXPLAINED
        for dword in range(change.offset // 4, (change.offset + change.length + 3) // 4):
            if mask[dword]:
                status[dword] = max(status.get(dword, 0), kind)
    kinds = list(status.values())
    covered_dwords = len(mask) - mask.count(0)
    return Coverage(
        covered_dwords=covered_dwords,
        region_dwords=len(mask),
        equal=covered_dwords - len(kinds),
        explained=kinds.count(_EXPLAINED),
        unexplained=kinds.count(_UNEXPLAINED),
    )
