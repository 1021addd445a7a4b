"""The text `devlink region dump` and `devlink region read` print (rig.formats.regionfile
reads a region file in any format the rig knows).

Two text layouts exist: today's byte per column
    0000000000000000 00 14 95 dc 00 14 95 14 00 35 16 70 00 34 db 30
and older iproute2's two-byte groups
    0000000000000000 0014 95dc 0014 9514 0035 1670 0034 db30
Both print the bytes in memory order, so a group is simply its bytes left to right.
"""

from __future__ import annotations

import re

from rig.errors import UsageError

_LINE = re.compile(r"^([0-9a-fA-F]{16})((?:\s+[0-9a-fA-F]+)+)\s*$")
_HANDLE = re.compile(r"^\S+/\S+/\S+:?$")  # "pci/0000:00:03.0/cr-space:" heading, if any


class DumpFormatError(UsageError):
    pass


def looks_like_dump_line(line: str) -> bool:
    """A stripped line in either layout, or the region heading devlink may print first."""
    return bool(_LINE.match(line)) or bool(_HANDLE.match(line))


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


def format_dump(data: bytes, start: int = 0) -> str:
    """The text layout today's `devlink region dump` prints (16 bytes a line)."""
    lines = []
    for off in range(0, len(data), 16):
        chunk = data[off : off + 16]
        lines.append(f"{start + off:016x} " + " ".join(f"{b:02x}" for b in chunk))
    return "\n".join(lines) + "\n"
