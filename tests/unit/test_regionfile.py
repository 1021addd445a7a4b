"""Region files in every format: told apart by content, forced with a format, partial dumps
completed from a fill, and every problem one line naming the file (and line)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from cx3 import layout as cr
from rig import builtin
from rig.errors import UsageError
from rig.formats.dumptext import DumpFormatError, format_dump
from rig.formats.mstdump import HW_DEV_ID, format_mstdump
from rig.formats.regionfile import RegionImage, load_region_file

SIZE = cr.SIZE


def devlink_json(data: bytes, start: int = 0, command: str = "dump", pretty: bool = False) -> str:
    """What iproute2 6.1's `devlink -j [-p] region dump|read` prints (seen in the guest):
    one object named after the command, "address"/"data" repeated per 256-byte chunk."""
    pairs = []
    for off in range(0, len(data), 256):
        numbers = ",".join(str(b) for b in data[off : off + 256])
        if pretty:
            pairs.append(f'        "address": {start + off},\n        "data": [ {numbers} ]')
        else:
            pairs.append(f'"address":{start + off},"data":[{numbers}]')
    if pretty:
        return f'{{\n    "{command}": {{\n' + ",\n".join(pairs) + "\n    }\n}\n"
    return f'{{"{command}":{{' + ",".join(pairs) + "}}"


def mstregdump(image: bytes, addresses: list[int]) -> str:
    return format_mstdump(image, addresses)


def connectx3_image() -> bytes:
    image = bytearray(os.urandom(SIZE))
    image[HW_DEV_ID : HW_DEV_ID + 4] = (0x000101F5).to_bytes(4, "big")
    return bytes(image)


@pytest.fixture
def image() -> bytes:
    return connectx3_image()


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(content, str):
        path.write_text(content)
    else:
        path.write_bytes(content)
    return path


def load(path: Path, fmt: str = "auto", fill: bool = True) -> RegionImage:
    return load_region_file(path, SIZE, "CR-space", fmt, builtin.crspace_image if fill else None)


def test_raw_whole_image(tmp_path: Path, image: bytes) -> None:
    got = load_region_file(write(tmp_path, "c.bin", image), SIZE, "CR-space")
    assert (got.data, got.format, got.covered, got.addresses) == (image, "raw", ((0, SIZE),), None)


@pytest.mark.parametrize("pretty", [False, True])
def test_devlink_json_dump_whole_image(tmp_path: Path, image: bytes, pretty: bool) -> None:
    path = write(tmp_path, "c.json", devlink_json(image, pretty=pretty))
    got = load_region_file(path, SIZE, "CR-space")
    assert (got.data, got.format, got.covered) == (image, "devlink-json", ((0, SIZE),))


def test_devlink_json_read_of_a_range_is_completed_from_the_fill(
    tmp_path: Path, image: bytes
) -> None:
    start = 0xF0000
    path = write(tmp_path, "r.json", devlink_json(image[start : start + 300], start, "read"))
    got = load_region_file(path, SIZE, "CR-space", fill=builtin.crspace_image)
    expected = bytearray(builtin.crspace_image())
    expected[start : start + 300] = image[start : start + 300]
    assert (got.data, got.format, got.covered) == (bytes(expected), "devlink-json", ((start, 300),))


def test_devlink_text_of_a_range_is_completed_from_the_fill(tmp_path: Path, image: bytes) -> None:
    path = write(tmp_path, "r.txt", format_dump(image[0x2000:0x2040], start=0x2000))
    got = load_region_file(path, SIZE, "CR-space", fill=builtin.crspace_image)
    assert got.format == "devlink-text" and got.covered == ((0x2000, 0x40),)
    assert got.data[0x2000:0x2040] == image[0x2000:0x2040]
    assert got.data[:0x2000] == builtin.crspace_image()[:0x2000]


def test_mstregdump_covers_its_addresses_and_keeps_their_order(
    tmp_path: Path, image: bytes
) -> None:
    addresses = [0x2000, 0x1000, 0x1004, HW_DEV_ID]  # any list, in the file's order
    path = write(tmp_path, "c.mst", mstregdump(image, addresses))
    got = load_region_file(path, SIZE, "CR-space", fill=builtin.crspace_image)
    assert got.format == "mstregdump" and got.addresses == tuple(addresses)
    assert got.covered == ((0x1000, 8), (0x2000, 4), (HW_DEV_ID, 4))
    for a in addresses:
        assert got.data[a : a + 4] == image[a : a + 4]
    assert got.data[0x1008:0x2000] == builtin.crspace_image()[0x1008:0x2000]


def test_a_partial_dump_without_a_fill_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "h.txt", format_dump(bytes(16), start=0x10))
    with pytest.raises(DumpFormatError, match=r"h.txt: the dump covers 16 bytes from 0x10"):
        load_region_file(path, 64, "health buffer")


def test_mstregdump_is_a_crspace_format(tmp_path: Path) -> None:
    path = write(tmp_path, "h.mst", "0x00000000 0x00000001\n")
    with pytest.raises(DumpFormatError, match=r"CR-space dump, not a health buffer"):
        load_region_file(path, 64, "health buffer")


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (  # a capture cut short by a failed read
            f"0x{HW_DEV_ID:08x} 0x000001f5\n-E- Cr read (0x000f0018) failed: Bad address(14)\n",
            r"^\S+/t.mst:2: truncated capture: mstregdump stopped with '-E- Cr read",
        ),
        (
            f"0x00001000 0x00000000\n0x{HW_DEV_ID:08x} 0x000001f7\n",
            r"^\S+/t.mst:2: hw_dev_id 0x1f7 at 0xf0014 is a ConnectX-3 Pro",
        ),
        (
            f"0x{HW_DEV_ID:08x} 0x000001f5\n0x00001000 0x0000zz00\n",
            r"^\S+/t.mst:2: bad value '0x0000zz00' at 0x1000",
        ),
    ],
)
def test_mstregdump_problems_name_file_line_and_reason(
    tmp_path: Path, content: str, needle: str
) -> None:
    with pytest.raises(DumpFormatError, match=needle) as e:
        load(write(tmp_path, "t.mst", content))
    assert "\n" not in str(e.value)


def test_a_corrupt_first_line_is_a_bad_line_of_the_files_format(tmp_path: Path) -> None:
    """Not raw binary with a wrong size: the rest of the file is devlink text."""
    text = "0000000000000000 00 11 22 zz\n" + format_dump(bytes(48), start=16)
    with pytest.raises(DumpFormatError) as e:
        load(write(tmp_path, "c.txt", text))
    assert str(e.value).endswith(
        "c.txt:1: not a region dump line: '0000000000000000 00 11 22 zz' "
        "(read as devlink dump text: the layout of line 2; --format forces one)"
    )


def test_text_in_no_known_format_says_what_was_tried(tmp_path: Path) -> None:
    with pytest.raises(DumpFormatError) as e:
        load(write(tmp_path, "notes.txt", "hello\nworld\n"))
    message = str(e.value)
    assert message.endswith(
        "notes.txt: not a CR-space dump in any known format: tried devlink JSON (no '{'), "
        "mstregdump text and devlink dump text (no line in either layout), raw binary "
        "(12 bytes, not 1048576)"
    )


def test_format_forces_a_reading(tmp_path: Path, image: bytes) -> None:
    text = mstregdump(image, [HW_DEV_ID])
    path = write(tmp_path, "c.mst", text)
    with pytest.raises(UsageError, match=r"holds 22 bytes; the region is 1048576 bytes$"):
        load(path, "raw")
    with pytest.raises(DumpFormatError, match=r"c.mst:1: not a region dump line"):
        load(path, "devlink-text")
    with pytest.raises(DumpFormatError, match=r"c.mst: not devlink region JSON: invalid JSON"):
        load(path, "devlink-json")
    assert load_region_file(path, SIZE, "CR-space", "mstregdump", builtin.crspace_image).format == (
        "mstregdump"
    )


def test_binary_is_raw_even_when_it_starts_like_text(tmp_path: Path) -> None:
    data = b"{" + bytes(SIZE - 1)
    assert load_region_file(write(tmp_path, "c.bin", data), SIZE, "CR-space").format == "raw"


def test_printable_raw_image_of_the_regions_size_is_raw(tmp_path: Path) -> None:
    data = b"ab" * 32
    assert load_region_file(write(tmp_path, "h.bin", data), 64, "health buffer").data == data


def test_dev_zero_is_refused_quickly_without_reading_it_all() -> None:
    t0 = time.monotonic()
    with pytest.raises(UsageError, match=r"^CR-space file /dev/zero is over 8388608 bytes"):
        load(Path("/dev/zero"))
    assert time.monotonic() - t0 < 5


def test_a_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"^cannot read CR-space file \S+: Is a directory$"):
        load(tmp_path)


def test_unknown_format_name() -> None:
    with pytest.raises(UsageError, match=r"unknown dump format 'hex'; choose one of raw,"):
        load(Path("/nonexistent"), "hex")
