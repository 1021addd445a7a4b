"""The built-in firmware state `rig replay` uses when the user gives none.

CR-space: every dword holds 0xC3 ("CX3") and its own offset, so any misplaced byte in a
snapshot names where it came from; hw_dev_id names a ConnectX-3, as mstflint requires; the CR
filter bit is set, so the driver's clear-before-dump / set-after path runs. Health buffer:
plausible assert words and syndrome.
"""

from __future__ import annotations

import struct

from cx3 import layout as cr

CATAS_WORDS = (0x0FFFFFFF, 0x00C30001, 0xDEADBEEF, 0x00000000)


def crspace_image() -> bytes:
    words = [0xC3000000 | off for off in range(0, cr.SIZE, 4)]
    image = bytearray(struct.pack(f">{len(words)}I", *words))
    image[cr.HW_DEV_ID : cr.HW_DEV_ID + 4] = struct.pack(">I", cr.CONNECTX3_HW_DEV_ID)
    image[cr.CR_FILTER : cr.CR_FILTER + 4] = struct.pack(">I", 1 << 6)
    return bytes(image)


def health_buffer() -> bytes:
    assert_var = (0x0000A5A5, 0x00000001, 0x00C3F00D, 0x00000000, 0x12345678)
    words = (
        *assert_var,
        0x0040A100,  # assert_exit_ptr
        0x0040B200,  # assert_callra
        0x0002_0000 | 42,
        5000,  # fw version major.minor, subminor
        0x00001003,  # hw id
        0x00000003,  # irisc index
        0x00000010,  # synd
        0x0000_0007,  # ext synd
        0,
        0,
        0,
    )
    return struct.pack(">16I", *words)
