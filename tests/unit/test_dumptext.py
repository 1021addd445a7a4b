from __future__ import annotations

import os
from pathlib import Path

import pytest

from rig.errors import RigError
from rig.formats.dumptext import DumpFormatError, format_dump, parse_dump_text
from rig.formats.regionfile import load_region_file

OLD = """\
0000000000000000 0014 95dc 0014 9514 0035 1670 0034 db30
0000000000000010 0000 0000 0000 0000 0000 0000 0000 0001
"""


def test_old_two_byte_groups() -> None:
    start, data = parse_dump_text(OLD)
    assert start == 0
    assert data[:8] == bytes.fromhex("001495dc00149514")
    assert len(data) == 32 and data[-1] == 1


def test_roundtrip_current_format() -> None:
    blob = os.urandom(100)
    start, data = parse_dump_text(format_dump(blob, start=0x40))
    assert (start, data) == (0x40, blob)


def test_heading_and_blank_lines_are_ignored() -> None:
    text = "pci/0000:00:03.0/fw-health:\n\n" + format_dump(b"\x01" * 32)
    assert parse_dump_text(text)[1] == b"\x01" * 32


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("0000000000000000 00 11\n0000000000000020 22\n", ":2: address 0x20"),
        ("0000000000000000 00 1\n", ":1: odd-length"),
        ("0000000000000000 00 11\nhello world\n", ":2: not a region dump line"),
        ("\n\n", "no region dump lines"),
    ],
)
def test_bad_text_names_the_line(text: str, needle: str) -> None:
    with pytest.raises(DumpFormatError, match=needle):
        parse_dump_text(text, "f")


def test_load_raw_and_text_files(tmp_path: Path) -> None:
    raw = tmp_path / "h.bin"
    raw.write_bytes(bytes(range(64)))
    assert load_region_file(raw, 64, "health").data == bytes(range(64))
    txt = tmp_path / "h.txt"
    txt.write_text(format_dump(bytes(range(64))))
    assert load_region_file(txt, 64, "health").data == bytes(range(64))


def test_load_wrong_size_and_missing(tmp_path: Path) -> None:
    f = tmp_path / "c.bin"
    f.write_bytes(bytes(100))
    with pytest.raises(RigError, match="holds 100 bytes; the region is 1048576"):
        load_region_file(f, 1 << 20, "CR-space")
    with pytest.raises(RigError, match="cannot read health file"):
        load_region_file(tmp_path / "nope", 64, "health")
    t = tmp_path / "late.txt"
    t.write_text("0000000000000010 00 11\n")
    with pytest.raises(DumpFormatError, match="covers 2 bytes from 0x10 to 0x12; the health must"):
        load_region_file(t, 64, "health")
