"""The built-in firmware state `rig replay` uses when the user gives none.

CR-space: every dword holds 0xC3 ("CX3") and its own offset, so any misplaced byte in a
snapshot names where it came from; hw_dev_id names a ConnectX-3, as mstflint requires; the CR
filter bit is set, so the driver's clear-before-dump / set-after path runs. Health buffer:
plausible assert words and syndrome.
"""

from __future__ import annotations

import struct

from cx3 import layout as cr
from rig.formats import health

CATAS_WORDS = (0x0FFFFFFF, 0x00C30001, 0xDEADBEEF, 0x00000000)


def crspace_image() -> bytes:
    words = [0xC3000000 | off for off in range(0, cr.SIZE, 4)]
    image = bytearray(struct.pack(f">{len(words)}I", *words))
    image[cr.HW_DEV_ID : cr.HW_DEV_ID + 4] = struct.pack(">I", cr.CONNECTX3_HW_DEV_ID)
    image[cr.CR_FILTER : cr.CR_FILTER + 4] = struct.pack(">I", 1 << 6)
    return bytes(image)


def health_buffer() -> bytes:
    """A firmware assert, in the fields of rig.formats.health."""
    return health.encode(
        {
            "assert_var[0]": 0x0000A5A5,
            "assert_var[1]": 0x00000001,
            "assert_var[2]": 0x00C3F00D,
            "assert_var[4]": 0x12345678,
            "assert_exit_ptr": 0x0040A100,
            "assert_callra": 0x0040B200,
            "fw_ver": 0x0002_002A,  # 2.42
            "hw_id": cr.CONNECTX3_HW_DEV_ID,
            "irisc_index": 3,
            "synd": 0x01,  # firmware internal error
            "ext_synd": 0x0007,
        }
    )
