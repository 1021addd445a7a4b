from __future__ import annotations

import os

from rig.formats.compare import diff, hexdump_diff


def test_equal() -> None:
    blob = os.urandom(1 << 20)
    d = diff(blob, bytes(blob))
    assert d.equal and d.first_offsets == []


def test_first_offsets_and_count() -> None:
    a = bytearray(8192)
    b = bytearray(a)
    for off in (5, 4097, 8191):
        b[off] = 0xFF
    d = diff(bytes(a), bytes(b))
    assert d.count == 3
    assert d.first_offsets == [5, 4097, 8191]


def test_length_mismatch_is_a_difference() -> None:
    d = diff(b"abcd", b"ab")
    assert not d.equal and d.count == 2 and d.first_offsets == [2]


def test_hexdump_points_at_the_byte() -> None:
    a = bytes(32)
    b = bytearray(a)
    b[0x13] = 0xAB
    text = hexdump_diff(a, bytes(b), ("truth", "cli"))
    lines = text.splitlines()
    assert lines[0].startswith("truth 00000010")
    assert "ab" in lines[1]
    caret = lines[2].index("^^")
    assert lines[1][caret : caret + 2] == "ab"
