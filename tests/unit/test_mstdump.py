"""mstflint's mstregdump text and chip csv: parsing, the chip check, writing, round trip."""

from __future__ import annotations

import os
import struct

import pytest

from rig.formats.dumptext import DumpFormatError
from rig.formats.mstdump import (
    HW_DEV_ID,
    check_connectx3,
    format_mstdump,
    parse_address_csv,
    parse_mstdump,
)

SIZE = 1 << 20
CSV = """\
#Addr, Size, Enable addr
0x001000,3,
0x0f0014,1,
0x0f3f60,2,0x0f3f00
0x0f3f68,2,
"""


def test_csv_lists_each_dword_and_skips_blocks_read_only_with_full() -> None:
    assert parse_address_csv(CSV, "c.csv") == (0x1000, 0x1004, 0x1008, 0xF0014, 0xF3F68, 0xF3F6C)


def test_csv_bad_line_names_the_line() -> None:
    with pytest.raises(DumpFormatError, match=r"^c.csv:3: not an address list line"):
        parse_address_csv("#Addr, Size, Enable addr\n0x1000,1,\nzzz,1,\n", "c.csv")


def test_values_are_big_endian_dwords() -> None:
    dwords = parse_mstdump("0x00001000 0x001495dc\n0x00001004 0x1\n", "d", SIZE)
    assert [(d.address, d.data, d.line) for d in dwords] == [
        (0x1000, bytes.fromhex("001495dc"), 1),
        (0x1004, bytes.fromhex("00000001"), 2),
    ]


def test_written_text_is_mstregdumps_and_round_trips() -> None:
    image = os.urandom(SIZE)
    addresses = parse_address_csv(CSV, "c.csv")
    text = format_mstdump(image, addresses)
    assert text.splitlines()[0] == f"0x00001000 0x{image[0x1000:0x1004].hex()}"
    dwords = parse_mstdump(text, "d", SIZE)
    assert [d.address for d in dwords] == list(addresses)
    assert all(d.data == image[d.address : d.address + 4] for d in dwords)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        (
            "0x00001000 0x00000001\n-E- Cr read (0x00001004) failed: Input/output error(5)\n",
            r"^d:2: truncated capture: mstregdump stopped with '-E- Cr read",
        ),
        ("0x00001000 0x00000001\n0x00001004 0xZZ\n", r"^d:2: bad value '0xZZ' at 0x1004"),
        ("0x00001000 0x123456789\n", r"^d:1: bad value '0x123456789'"),
        ("0x00001000 0x1\nhello\n", r"^d:2: not an mstregdump line"),
        ("0x00001002 0x1\n", r"^d:1: address 0x1002 is not dword-aligned"),
        ("0x00100000 0x1\n", r"^d:1: address 0x100000 is beyond"),
        ("0x1000 0x1\n\n0x1000 0x2\n", r"^d:3: address 0x1000 again \(first on line 1\)"),
        ("\n", r"^d: no mstregdump lines"),
    ],
)
def test_bad_text_names_file_line_and_reason(text: str, needle: str) -> None:
    with pytest.raises(DumpFormatError, match=needle):
        parse_mstdump(text, "d", SIZE)


def test_warning_lines_are_not_data() -> None:
    dwords = parse_mstdump("-W- slow access\n0x00001000 0x1\n", "d", SIZE)
    assert [d.address for d in dwords] == [0x1000]


def _with_dev_id(value: int) -> str:
    return f"0x00001000 0x00000000\n0x{HW_DEV_ID:08x} 0x{value:08x}\n"


def test_connectx3_is_accepted_whatever_its_revision() -> None:
    check_connectx3(parse_mstdump(_with_dev_id(0x000101F5), "d", SIZE), "d")


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        (0x000001F7, r"^d:2: hw_dev_id 0x1f7 at 0xf0014 is a ConnectX-3 Pro; the rig emulates"),
        (0x00001003, r"^d:2: hw_dev_id 0x1003 at 0xf0014 is not a ConnectX-3 \(0x1f5\)"),
        (0x01F50000, r"^d:2: hw_dev_id 0x0 at 0xf0014 is not a ConnectX-3"),
    ],
)
def test_other_chips_are_refused(value: int, needle: str) -> None:
    with pytest.raises(DumpFormatError, match=needle):
        check_connectx3(parse_mstdump(_with_dev_id(value), "d", SIZE), "d")


def test_a_dump_without_hw_dev_id_is_refused() -> None:
    with pytest.raises(DumpFormatError, match=r"^d: no line for hw_dev_id \(0xf0014\)"):
        check_connectx3(parse_mstdump("0x00001000 0x1\n", "d", SIZE), "d")


def test_format_reads_the_image_big_endian() -> None:
    image = bytearray(SIZE)
    image[0xF0014:0xF0018] = struct.pack(">I", 0x1F5)
    assert format_mstdump(bytes(image), [0xF0014]) == "0x000f0014 0x000001f5\n"
