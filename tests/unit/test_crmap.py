"""rig.formats.crmap: CR-space in 4 KiB cells, from every comparison of a replay."""

from __future__ import annotations

import os

from cx3 import layout
from rig.formats import crmap
from rig.formats.crmap import Pair


def flipped(image: bytes, *offsets: int) -> bytes:
    out = bytearray(image)
    for off in offsets:
        out[off] ^= 0xFF
    return bytes(out)


def test_each_cell_takes_the_worst_of_what_every_comparison_found() -> None:
    given = os.urandom(layout.SIZE)
    capture = flipped(given, layout.CATAS_OFFSET, 0x12345)  # a register's, then a stray byte
    cli = flipped(capture, layout.HCR_OFFSET)  # a reader wrong inside a register
    pairs = [
        Pair("input vs capture", "input", "capture", given, capture, registers_explain=True),
        Pair("capture vs CLI", "capture", "CLI", capture, cli, registers_explain=False),
    ]
    covered = [(0, 0x30000), (0x80000, 0x1000)]  # a partial dump: the rest not covered
    cells = crmap.crspace_map(pairs, covered, layout.SIZE)
    assert len(cells) == 256
    status = {c.offset: c.status for c in cells}
    assert status[0x1F000] == crmap.EXPLAINED and cells[0x1F].registers() == ["catas buffer"]
    assert status[0x12000] == crmap.UNEXPLAINED
    assert [f.change.offset for f in cells[0x12].findings] == [0x12345]
    assert status[0x80000] == crmap.UNEXPLAINED  # the HCR: a reader must read it right
    assert not cells[0x80].findings[0].explained and cells[0x80].registers() == ["HCR"]
    assert status[0x0] == status[0x2F000] == crmap.EQUAL
    assert status[0x30000] == status[0xFF000] == crmap.NOT_COVERED

    summary = crmap.summary(cells)
    assert summary["counts"] == {
        "equal": 0x30 - 2,
        "explained": 1,
        "unexplained": 2,
        "not covered": 256 - 0x30 - 1,
    }
    listed = summary["cells"]
    assert isinstance(listed, list)
    assert [(c["offset"], c["status"]) for c in listed] == [
        (0x12000, "unexplained"),
        (0x1F000, "explained"),
        (0x80000, "unexplained"),
    ]
    assert listed[0]["unexplained"] == [0x12345]


def test_all_equal_and_no_comparison() -> None:
    image = os.urandom(layout.SIZE)
    pair = Pair("same", "a", "b", image, image, registers_explain=True)
    cells = crmap.crspace_map([pair], [(0, layout.SIZE)], layout.SIZE)
    assert {c.status for c in cells} == {crmap.EQUAL}
    assert crmap.summary(cells)["cells"] == []
