"""The firmware health buffer (the fw-health region's 64 bytes), field by field.

mlx4 copies the buffer into its fw-health snapshot without reading it, and no public source
lays out a ConnectX-3's. The fields here are those Mellanox firmware of that generation presents
to mlx5, as include/linux/mlx5/device.h long declared `struct health_buffer` (five assert
variables, the assert's exit pointer and call return address, firmware version, hardware id,
iRISC index, syndrome, extended syndrome), with mlx5's names for the syndromes (health.c). It
is an assumption for a ConnectX-3: report.html shows every raw dword beside the decoding.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from cx3.layout import HEALTH_SIZE


@dataclass(frozen=True)
class Field:
    offset: int
    size: int  # bytes, big-endian
    name: str


FIELDS = (
    *(Field(4 * i, 4, f"assert_var[{i}]") for i in range(5)),
    Field(0x14, 12, "reserved"),
    Field(0x20, 4, "assert_exit_ptr"),
    Field(0x24, 4, "assert_callra"),
    Field(0x28, 8, "reserved"),
    Field(0x30, 4, "fw_ver"),
    Field(0x34, 4, "hw_id"),
    Field(0x38, 4, "reserved"),
    Field(0x3C, 1, "irisc_index"),
    Field(0x3D, 1, "synd"),
    Field(0x3E, 2, "ext_synd"),
)
BY_NAME = {f.name: f for f in FIELDS if f.name != "reserved"}

# MLX5_HEALTH_SYNDR_* and their words in mlx5's hsynd_str().
SYNDROMES = {
    0x01: "firmware internal error",
    0x07: "irisc not responding",
    0x08: "unrecoverable hardware error",
    0x09: "firmware CRC error",
    0x0A: "ICM fetch PCI error",
    0x0B: "HW fatal error",
    0x0C: "async EQ buffer overrun",
    0x0D: "EQ error",
    0x0E: "invalid EQ referenced",
    0x0F: "FFSER error",
    0x10: "high temperature",
}


@dataclass(frozen=True)
class Decoded:
    field: Field
    value: int
    meaning: str  # "" unless the value has a name


def decode(data: bytes) -> list[Decoded]:
    """Each field of a 64-byte health buffer (a shorter one: the fields it holds)."""
    out = []
    for f in FIELDS:
        if f.offset + f.size > len(data):
            break
        value = int.from_bytes(data[f.offset : f.offset + f.size], "big")
        meaning = SYNDROMES.get(value, "unknown syndrome") if f.name == "synd" else ""
        out.append(Decoded(f, value, meaning))
    return out


def encode(values: Mapping[str, int]) -> bytes:
    """A health buffer with these fields set (by name), the rest zero."""
    data = bytearray(HEALTH_SIZE)
    for name, value in values.items():
        f = BY_NAME[name]
        data[f.offset : f.offset + f.size] = value.to_bytes(f.size, "big")
    return bytes(data)
