"""Coverage figures: over the dwords the input gave only, each equal, explained or not."""

from __future__ import annotations

import os

from cx3 import layout as cr
from rig.formats.coverage import coverage
from rig.formats.registers import explain


def test_figures_count_only_covered_dwords() -> None:
    image = os.urandom(cr.SIZE)
    capture = bytearray(image)
    capture[cr.CATAS_OFFSET] ^= 1  # explained: the catas buffer
    capture[cr.CATAS_OFFSET + 5] ^= 1  # a second dword of it
    capture[0x2001] ^= 1  # unexplained, covered
    capture[0x3000] ^= 1  # unexplained, but not covered: not counted
    covered = ((cr.CATAS_OFFSET, 16), (0x2000, 8))
    got = coverage(covered, cr.SIZE, explain(image, bytes(capture)))
    assert got.as_dict() == {
        "covered_dwords": 6,
        "region_dwords": cr.SIZE // 4,
        "equal": 3,
        "explained": 2,
        "unexplained": 1,
    }
    assert got.summary() == (
        "6 of 262144 dwords (0.0%) from the input: 3 equal, 2 explained, 1 unexplained"
    )


def test_a_dword_is_covered_by_any_of_its_bytes() -> None:
    image = bytes(cr.SIZE)
    capture = bytearray(image)
    # A byte changed in the catas buffer's last dword and one in the dword after it; the
    # input gave 2 bytes of the first and 1 of the second.
    end = cr.CATAS_OFFSET + cr.CATAS_DWORDS * 4
    capture[end - 1] = 1
    capture[end] = 1
    got = coverage(((end - 2, 3),), cr.SIZE, explain(image, bytes(capture)))
    assert (got.covered_dwords, got.equal, got.explained, got.unexplained) == (2, 0, 1, 1)


def test_a_whole_image_equal_to_its_capture() -> None:
    image = os.urandom(cr.SIZE)
    got = coverage(((0, cr.SIZE),), cr.SIZE, explain(image, image))
    assert (got.covered_dwords, got.equal, got.explained, got.unexplained) == (
        cr.SIZE // 4,
        cr.SIZE // 4,
        0,
        0,
    )
