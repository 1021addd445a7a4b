"""mstflint's CR-space dump text (`mstregdump`, once `mstdump`) and the address list it reads.

mstregdump prints one dword a line, `0x%8.8x 0x%8.8x`: the address, then the value read there.
CR-space is big-endian: the region's bytes at the address are `value.to_bytes(4, "big")`.
It reads only the dwords its chip's csv lists (`#Addr, Size, Enable addr`, size in dwords;
a block with an enable address is read only with `-full`), about 14% of a ConnectX-3's BAR.
When a read fails it stops with one `-E- ...` line: such a capture is truncated.

mstflint names the chip by hw_dev_id, the low 16 bits of CR-space 0xf0014.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cx3 import layout
from rig.formats.dumptext import DumpFormatError

logger = logging.getLogger(__name__)

HW_DEV_ID = layout.HW_DEV_ID
CONNECTX3 = layout.CONNECTX3_HW_DEV_ID
CONNECTX3_PRO = 0x1F7

_LINE = re.compile(r"^0x([0-9a-fA-F]{1,8})\s+(\S+)$")
_VALUE = re.compile(r"^0x[0-9a-fA-F]{1,8}$")
_ERROR = "-E-"
# mstflint's warning and information prefixes: not data, not a reason to refuse the capture.
_NOTES = ("-W-", "-I-")


def looks_like_mstdump_line(line: str) -> bool:
    return bool(_LINE.match(line)) or line.startswith(_ERROR)


class ChipError(DumpFormatError):
    """A well-formed dump of a chip the rig does not emulate."""


@dataclass(frozen=True)
class Dword:
    address: int
    value: int
    line: int  # in the file it came from

    @property
    def data(self) -> bytes:
        return self.value.to_bytes(4, "big")


def parse_mstdump(text: str, source: str, size: int) -> list[Dword]:
    """The dwords of mstregdump text, in file order, each within a `size`-byte region."""
    dwords: list[Dword] = []
    seen: dict[int, int] = {}
    for n, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped:
            continue
        if stripped.startswith(_ERROR):
            raise DumpFormatError(
                f"{source}:{n}: truncated capture: mstregdump stopped with {stripped[:60]!r}"
            )
        if stripped.startswith(_NOTES):
            logger.warning(f"{source}:{n}: mstregdump said {stripped[:80]!r}")
            continue
        m = _LINE.match(stripped)
        if not m:
            raise DumpFormatError(
                f"{source}:{n}: not an mstregdump line (0xADDRESS 0xVALUE): {stripped[:60]!r}"
            )
        address, value = int(m.group(1), 16), m.group(2)
        if not _VALUE.match(value):
            raise DumpFormatError(
                f"{source}:{n}: bad value {value[:20]!r} at {address:#x}: "
                "not 0x and at most 8 hex digits"
            )
        if address % 4:
            raise DumpFormatError(f"{source}:{n}: address {address:#x} is not dword-aligned")
        if address + 4 > size:
            raise DumpFormatError(
                f"{source}:{n}: address {address:#x} is beyond the {size:#x}-byte region"
            )
        if address in seen:
            raise DumpFormatError(
                f"{source}:{n}: address {address:#x} again (first on line {seen[address]})"
            )
        seen[address] = n
        dwords.append(Dword(address, int(value, 16), n))
    if not dwords:
        raise DumpFormatError(f"{source}: no mstregdump lines (0xADDRESS 0xVALUE)")
    return dwords


def check_connectx3(dwords: Iterable[Dword], source: str) -> None:
    """Refuse a dump of any chip but a ConnectX-3, the one the rig emulates."""
    found = next((d for d in dwords if d.address == HW_DEV_ID), None)
    if found is None:
        raise ChipError(
            f"{source}: no line for hw_dev_id ({HW_DEV_ID:#x}): cannot tell which chip "
            "this dump is from"
        )
    dev_id = found.value & 0xFFFF
    where = f"{source}:{found.line}: hw_dev_id {dev_id:#x} at {HW_DEV_ID:#x}"
    if dev_id == CONNECTX3_PRO:
        raise ChipError(
            f"{where} is a ConnectX-3 Pro; the rig emulates a ConnectX-3 ({CONNECTX3:#x})"
        )
    if dev_id != CONNECTX3:
        raise ChipError(f"{where} is not a ConnectX-3 ({CONNECTX3:#x})")


def format_mstdump(image: bytes, addresses: Sequence[int]) -> str:
    """mstregdump's text for the dwords of `image` at `addresses`, in that order."""
    view = memoryview(image)
    return "".join(f"0x{a:08x} 0x{int.from_bytes(view[a : a + 4], 'big'):08x}\n" for a in addresses)


def parse_address_csv(text: str, source: str) -> tuple[int, ...]:
    """The dword addresses mstregdump reads from a chip csv (`#Addr, Size, Enable addr`)."""
    addresses: list[int] = []
    for n, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        fields = [f.strip() for f in stripped.split(",")]
        try:
            start, count = int(fields[0], 16), int(fields[1], 0)
        except (IndexError, ValueError):
            raise DumpFormatError(
                f"{source}:{n}: not an address list line (addr, size, enable addr): "
                f"{stripped[:60]!r}"
            ) from None
        if len(fields) > 2 and fields[2]:
            continue  # read only with `mstregdump -full`
        addresses += range(start, start + 4 * count, 4)
    if not addresses:
        raise DumpFormatError(f"{source}: no addresses")
    return tuple(addresses)
