"""A region image as users hold it, in any format the rig reads, told apart by content.

Formats: raw binary; the text `devlink region dump`/`read` prints (rig.formats.dumptext);
their JSON (`devlink -j`, rig.formats.devlinkjson); and mstflint's `mstregdump` text
(rig.formats.mstdump). Binary content is raw; text is JSON when it starts with "{", else the
first line in a known layout decides, so a corrupt first line is reported as a bad line of
the format the rest of the file is in. `fmt` forces one.

A dump may cover part of the region (mstregdump reads ~14% of CR-space, `devlink region
read` a range): the rest then comes from `fill`, and the image records what the file covered.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cx3 import layout as cr
from rig.errors import UsageError
from rig.formats import mstdump
from rig.formats.devlinkjson import parse_region_json
from rig.formats.dumptext import DumpFormatError, looks_like_dump_line, parse_dump_text

logger = logging.getLogger(__name__)

FORMATS = {
    "raw": "raw binary",
    "devlink-text": "devlink dump text",
    "devlink-json": "devlink JSON",
    "mstregdump": "mstregdump text",
}
AUTO = "auto"
# The longest text a dump of one region byte takes (mstregdump: 22 characters a dword), with
# room to spare: reading stops there, so /dev/zero or a wrong file cannot exhaust memory.
TEXT_PER_BYTE = 8
MIN_READ_LIMIT = 64 << 10
_TEXT_BYTES = bytes(range(0x20, 0x7F)) + b"\t\n\r\f\v"

Range = tuple[int, int]  # (offset, length)


@dataclass(frozen=True)
class RegionImage:
    data: bytes  # the whole region: the file's bytes, the rest from the fill
    format: str  # a FORMATS key, or "built-in"
    covered: tuple[Range, ...]  # what the file gave, merged runs in address order
    addresses: tuple[int, ...] | None = None  # mstregdump's dword addresses, in file order

    @classmethod
    def whole(cls, data: bytes, fmt: str) -> RegionImage:
        return cls(data, fmt, ((0, len(data)),))

    @property
    def covered_bytes(self) -> int:
        return sum(length for _, length in self.covered)


def load_region_file(
    path: Path,
    size: int,
    what: str,
    fmt: str = AUTO,
    fill: Callable[[], bytes] | None = None,
) -> RegionImage:
    """Read a `size`-byte region image from `path` in `fmt` (or the format its content shows).

    A dump covering part of the region is completed from `fill()`; without a fill it is
    refused. Every problem is one UsageError line naming the file (and line)."""
    if fmt != AUTO and fmt not in FORMATS:
        raise UsageError(f"unknown dump format {fmt!r}; choose one of {', '.join(FORMATS)}")
    data = _read_bounded(path, size, what)
    detected_by = ""
    if fmt == AUTO:
        fmt, detected_by = _detect(data, size, path, what)
    image = _parse(data, fmt, size, what, path, fill, detected_by)
    if image.covered_bytes < size:
        logger.info(
            f"{path}: {FORMATS[fmt]} covering {image.covered_bytes // 4} of {size // 4} "
            f"dwords; the rest of the {what} is the built-in image"
        )
    return image


def _read_bounded(path: Path, size: int, what: str) -> bytes:
    limit = max(size * TEXT_PER_BYTE, MIN_READ_LIMIT)
    try:
        with path.open("rb") as f:
            data = f.read(limit + 1)
    except OSError as e:
        raise UsageError(f"cannot read {what} file {path}: {e.strerror}") from e
    if len(data) > limit:
        raise UsageError(
            f"{what} file {path} is over {limit} bytes: no dump of the {size}-byte region "
            "is that long"
        )
    return data


def _detect(data: bytes, size: int, path: Path, what: str) -> tuple[str, str]:
    """The format `data` is in, and what showed it (for the error if it then fails to parse)."""
    if data.translate(None, _TEXT_BYTES):
        return "raw", "it is not text"
    text = data.decode("ascii")
    if text.lstrip().startswith("{"):
        return "devlink-json", "it starts with '{'"
    for n, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if mstdump.looks_like_mstdump_line(stripped):
            return "mstregdump", f"the layout of line {n}"
        if looks_like_dump_line(stripped):
            return "devlink-text", f"the layout of line {n}"
    if len(data) == size:
        return "raw", "no line of it is in a text layout, and it is the region's size"
    raise DumpFormatError(
        f"{path}: not a {what} dump in any known format: tried devlink JSON (no '{{'), "
        "mstregdump text and devlink dump text (no line in either layout), raw binary "
        f"({len(data)} bytes, not {size})"
    )


def _parse(
    data: bytes,
    fmt: str,
    size: int,
    what: str,
    path: Path,
    fill: Callable[[], bytes] | None,
    detected_by: str,
) -> RegionImage:
    try:
        if fmt == "raw":
            if len(data) != size:
                raise UsageError(
                    f"{what} file {path} holds {len(data)} bytes; the region is {size} bytes"
                )
            return RegionImage.whole(data, fmt)
        try:
            text = data.decode("ascii")
        except UnicodeDecodeError as e:
            raise DumpFormatError(
                f"{path}: {FORMATS[fmt]} with a non-ASCII byte at {e.start}"
            ) from None
        if fmt == "mstregdump":
            return _from_mstdump(text, size, what, path, fill)
        parse = parse_dump_text if fmt == "devlink-text" else parse_region_json
        start, chunk = parse(text, str(path))
        return _place(((start, chunk),), fmt, size, what, path, fill)
    except UsageError as e:
        if not detected_by or isinstance(e, mstdump.ChipError):  # read right: the wrong chip
            raise
        raise type(e)(f"{e} (read as {FORMATS[fmt]}: {detected_by}; --format forces one)") from e


def _from_mstdump(
    text: str, size: int, what: str, path: Path, fill: Callable[[], bytes] | None
) -> RegionImage:
    if size != cr.SIZE:
        raise DumpFormatError(f"{path}: mstregdump text is a CR-space dump, not a {what}")
    dwords = mstdump.parse_mstdump(text, str(path), size)
    mstdump.check_connectx3(dwords, str(path))
    image = _place(tuple((d.address, d.data) for d in dwords), "mstregdump", size, what, path, fill)
    return RegionImage(image.data, image.format, image.covered, tuple(d.address for d in dwords))


def _place(
    chunks: tuple[tuple[int, bytes], ...],
    fmt: str,
    size: int,
    what: str,
    path: Path,
    fill: Callable[[], bytes] | None,
) -> RegionImage:
    """The region with `chunks` laid over `fill()` (or the one chunk that is all of it)."""
    for start, chunk in chunks:
        if start + len(chunk) > size:
            raise DumpFormatError(
                f"{path}: the dump reaches {start + len(chunk):#x}, beyond the {size}-byte {what}"
            )
    covered = _merge([(start, len(chunk)) for start, chunk in chunks])
    whole = covered == ((0, size),)
    if whole and len(chunks) == 1:
        return RegionImage.whole(chunks[0][1], fmt)
    if not whole and fill is None:
        first, last = covered[0][0], covered[-1][0] + covered[-1][1]
        raise DumpFormatError(
            f"{path}: the dump covers {sum(n for _, n in covered)} bytes from {first:#x} to "
            f"{last:#x}; the {what} must be given whole ({size} bytes)"
        )
    image = bytearray(size if whole or fill is None else fill())
    for start, chunk in chunks:
        image[start : start + len(chunk)] = chunk
    return RegionImage(bytes(image), fmt, covered)


def _merge(ranges: list[Range]) -> tuple[Range, ...]:
    merged: list[list[int]] = []
    for start, length in sorted(ranges):
        if merged and start <= merged[-1][0] + merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], start + length - merged[-1][0])
        else:
            merged.append([start, length])
    return tuple((s, n) for s, n in merged)
