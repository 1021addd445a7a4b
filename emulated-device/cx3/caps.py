"""What the firmware advertises: the QUERY_FW and QUERY_DEV_CAP outboxes (QUERY_PORT: port.py).

Field offsets follow the driver's parsers in drivers/net/ethernet/mellanox/mlx4/fw.c
(mlx4_QUERY_FW, mlx4_QUERY_DEV_CAP, mlx4_QUERY_PORT). The configuration: two Ethernet ports,
no SR-IOV, 32-byte EQEs, every optional capability flag clear but LSO (flags bit 15, which
`en_main.c: mlx4_en_add` reads as LSO_support and mlx4_en turns into NETIF_F_TSO / TSO6; the
datapath segments LSO WQEs: `frame.segment`). Bytes not set here are 0.
"""

from __future__ import annotations

import struct

from . import layout

OUTBOX_SIZE = 0x100

FW_VERSION = (2, 42, 5000)  # major, minor, subminor
CMD_IF_REV = 3  # 2 would select the old port commands
LOG_MAX_CMDS = 4

MAC = 0x0002C9000001  # Mellanox OUI: port 1's MAC unless the model is given another
ETH_MTU = 1500
LOG_MAX_MACS = 7  # QUERY_PORT 0x0a: 128 MACs and 128 VLANs per port, as ConnectX-3
LOG_MAX_VLANS = 7
LOG_MAX_GSO = 16  # 64 KiB: the largest LSO WQE payload advertised
FLAG_LSO = 1 << 15  # QUERY_DEV_CAP_FLAGS_OFFSET (0x44, the low half of dev_cap->flags)
MAX_ICM_SIZE = 1 << 40  # the profile needs ~0x1_1180_1000; "won't fit" aborts the probe


def query_fw() -> bytes:
    out = bytearray(OUTBOX_SIZE)
    major, minor, subminor = FW_VERSION
    struct.pack_into(">HHHH", out, 0x00, 0, major, subminor, minor)  # fw_pages 0: no MAP_FA
    struct.pack_into(">H", out, 0x0A, CMD_IF_REV)
    out[0x0F] = LOG_MAX_CMDS
    struct.pack_into(">Q", out, 0x20, layout.CLR_INT_OFFSET)  # clr_int in BAR0 (0x28 = 0)
    struct.pack_into(">Q", out, 0x30, layout.CATAS_OFFSET)
    struct.pack_into(">I", out, 0x38, layout.CATAS_DWORDS)  # must be > 0 or polling is off
    return bytes(out)  # 0x3c catas BAR bits 0 -> BAR0


# QUERY_DEV_CAP byte fields: offset -> value (fw.c: QUERY_DEV_CAP_*_OFFSET).
_DEV_CAP_BYTES = {
    0x10: 14,  # log max SRQ size
    0x11: 14,  # log max QP size
    0x12: 6,  # 64 reserved QPs -> base_sqpn 512
    0x13: 18,  # log max QPs
    0x14: 0x60,  # 64 reserved SRQs
    0x15: 16,  # log max SRQs
    0x19: 22,  # log max CQ size
    0x1A: 7,  # 128 reserved CQs -> completion EQ of 65536 entries
    0x1B: 16,  # log max CQs
    0x1D: 17,  # log max MPTs
    0x1E: 2,  # 4 reserved EQs -> first EQ is 4
    0x1F: 4,  # 16 EQs: num_eqs - reserved must leave >= 2
    0x22: 4,  # 16 reserved MPTs: mlx4_en's region must not be MPT 1, whose lkey 0x100 is
    # MLX4_INVALID_LKEY (the padding key that ends a receive WQE)
    0x2D: LOG_MAX_GSO,  # QUERY_DEV_CAP_MAX_GSO_OFFSET: max_gso_sz = 1 << 16
    0x37: 2,  # two ports (cabled to each other: cable.py)
    0x38: 31,  # log max message
    0x4B: 12,  # log min page size
    0x65: 17,  # log max PDs
}

# QUERY_DEV_CAP be16 entry sizes: each must be a non-zero power of two (the driver divides).
_DEV_CAP_ENTRY_SIZES = {
    0x80: 32,  # RDMARC
    0x82: 256,  # QPC
    0x84: 64,  # AUXC
    0x86: 64,  # ALTC
    0x88: 64,  # EQC
    0x8A: 64,  # CQC
    0x8C: 64,  # SRQ
    0x8E: 64,  # cMPT
    0x90: 8,  # MTT: the driver writes 8-byte MTT entries, only 8 is consistent
    0x92: 64,  # dMPT
}


def query_dev_cap(health_buffer: bool = True) -> bytes:
    """health_buffer False: firmware without health-buffer access (crdump is then skipped)."""
    out = bytearray(OUTBOX_SIZE)
    for off, value in _DEV_CAP_BYTES.items():
        out[off] = value
    for off, value in _DEV_CAP_ENTRY_SIZES.items():
        struct.pack_into(">H", out, off, value)
    struct.pack_into(">I", out, 0x44, FLAG_LSO)
    struct.pack_into(">Q", out, 0xA0, MAX_ICM_SIZE)
    health = layout.HEALTH_OFFSET if health_buffer else 0
    struct.pack_into(">I", out, 0xE4, health)  # 0 makes the driver skip crdump
    return bytes(out)
