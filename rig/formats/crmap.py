"""CR-space as 256 cells of 4 KiB: what every comparison of a replay found in each.

A comparison (`Pair`) sets two images of CR-space side by side: the input against the device's
capture (a register may explain a change), the capture against what a reader got (nothing
explains a difference), the device's BAR0 against a live read (a live register may have moved
in between). A cell is
* unexplained when any comparison differs there without a register to account for it;
* explained when every difference there is a register's;
* equal when nothing differs there and the input gave some of its bytes;
* not covered when nothing differs there and the input gave none of it (a partial dump is
  completed from the built-in image).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from rig.formats.coverage import Range
from rig.formats.registers import Change, explain

CELL = 4096
EQUAL, EXPLAINED, UNEXPLAINED, NOT_COVERED = "equal", "explained", "unexplained", "not covered"
STATUSES = (EQUAL, EXPLAINED, UNEXPLAINED, NOT_COVERED)


@dataclass(frozen=True)
class Pair:
    label: str  # what is compared, e.g. "input vs device capture"
    a: str  # the expected side's name
    b: str
    a_data: bytes
    b_data: bytes
    registers_explain: bool  # a register's change is expected between the two


@dataclass(frozen=True)
class Finding:
    pair: Pair
    change: Change  # change.register names the register there (if any)
    explained: bool


@dataclass
class Cell:
    index: int
    status: str = EQUAL
    findings: list[Finding] = field(default_factory=list)

    @property
    def offset(self) -> int:
        return self.index * CELL

    def registers(self) -> list[str]:
        return list(dict.fromkeys(f.change.register for f in self.findings if f.change.register))


def crspace_map(pairs: Sequence[Pair], covered: Iterable[Range], size: int) -> list[Cell]:
    cells = [Cell(i) for i in range((size + CELL - 1) // CELL)]
    touched = bytearray(len(cells))
    for start, length in covered:
        for i in range(start // CELL, (start + length - 1) // CELL + 1):
            touched[i] = 1
    for pair in pairs:
        for change in explain(pair.a_data, pair.b_data):  # runs never cross a cell
            explained = pair.registers_explain and change.register is not None
            cells[change.offset // CELL].findings.append(Finding(pair, change, explained))
    for cell in cells:
        if any(not f.explained for f in cell.findings):
            cell.status = UNEXPLAINED
        elif cell.findings:
            cell.status = EXPLAINED
        elif not touched[cell.index]:
            cell.status = NOT_COVERED
    return cells


def summary(cells: Sequence[Cell]) -> dict[str, object]:
    """For report.json: the count of each status, and the cells that are not simply equal."""
    return {
        "cell_bytes": CELL,
        "counts": {s: sum(c.status == s for c in cells) for s in STATUSES},
        "cells": [
            {
                "offset": c.offset,
                "status": c.status,
                "registers": c.registers(),
                "unexplained": [f.change.offset for f in c.findings if not f.explained][:16],
            }
            for c in cells
            if c.status not in (EQUAL, NOT_COVERED)
        ],
    }
