"""Region contents as users hold them: raw binary, or the text `devlink region dump` prints.

Two text layouts exist: today's byte per column
    0000000000000000 00 14 95 dc 00 14 95 14 00 35 16 70 00 34 db 30
and older iproute2's two-byte groups
    0000000000000000 0014 95dc 0014 9514 0035 1670 0034 db30
Both print the bytes in memory order, so a group is simply its bytes left to right.
"""

from __future__ import annotations

import re
from pathlib import Path

from rig.errors import UsageError

_LINE = re.compile(r"^([0-9a-fA-F]{16})((?:\s+[0-9a-fA-F]+)+)\s*$")
_HANDLE = re.compile(r"^\S+/\S+/\S+:?$")  # "pci/0000:00:03.0/cr-space:" heading, if any


class DumpFormatError(UsageError):
    pass


def looks_like_text(data: bytes) -> bool:
    head = data[:64].lstrip()
    try:
        text = head.decode("ascii")
    except UnicodeDecodeError:
        return False
    first = text.splitlines()[0] if text else ""
    return bool(re.match(r"^[0-9a-fA-F]{16}\s", first)) or bool(_HANDLE.match(first.strip()))


def parse_dump_text(text: str, source: str = "<text>") -> tuple[int, bytes]:
    """Parse dump text into (start address, bytes). Lines must be contiguous."""
    out = bytearray()
    start: int | None = None
    for n, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or (start is None and _HANDLE.match(stripped)):
            continue
        m = _LINE.match(stripped)
        if not m:
            raise DumpFormatError(f"{source}:{n}: not a region dump line: {stripped[:60]!r}")
        addr = int(m.group(1), 16)
        groups = m.group(2).split()
        if any(len(g) % 2 for g in groups):
            raise DumpFormatError(f"{source}:{n}: odd-length hex group in {stripped[:60]!r}")
        if start is None:
            start = addr
        expected = start + len(out)
        if addr != expected:
            raise DumpFormatError(
                f"{source}:{n}: address {addr:#x} does not follow the previous line"
                f" (expected {expected:#x})"
            )
        out += bytes.fromhex("".join(groups))
    if start is None:
        raise DumpFormatError(f"{source}: no region dump lines found")
    return start, bytes(out)


def load_region_file(path: Path, size: int, what: str) -> bytes:
    """Load a region image (raw or dump text) that must be exactly `size` bytes from 0."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UsageError(f"cannot read {what} file {path}: {e.strerror}") from e
    if looks_like_text(data):
        try:
            text = data.decode("ascii")
        except UnicodeDecodeError as e:
            raise DumpFormatError(f"{path}: dump text with non-ASCII bytes at {e.start}") from e
        start, data = parse_dump_text(text, str(path))
        if start != 0:
            raise DumpFormatError(f"{path}: dump starts at {start:#x}, expected 0")
    if len(data) != size:
        raise UsageError(f"{what} file {path} holds {len(data)} bytes; the region is {size} bytes")
    return data


def format_dump(data: bytes, start: int = 0) -> str:
    """The text layout today's `devlink region dump` prints (16 bytes a line)."""
    lines = []
    for off in range(0, len(data), 16):
        chunk = data[off : off + 16]
        lines.append(f"{start + off:016x} " + " ".join(f"{b:02x}" for b in chunk))
    return "\n".join(lines) + "\n"
