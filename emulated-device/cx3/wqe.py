"""Send WQEs as mlx4_en posts them (`en_tx.c: mlx4_en_xmit`, `include/linux/mlx4/qp.h`).

A send queue is a ring of 64-byte TXBBs; a WQE takes one or more. It starts with the control
segment (`struct mlx4_wqe_ctrl_seg`): owner bit and opcode, the VLAN to insert and the WQE
size in 16-byte units, the flags (completion, checksum offloads), the immediate. Then come
segments up to that size: data segments (`mlx4_wqe_data_seg`: length, lkey, address) and inline
segments (`mlx4_wqe_inline_seg`: bit 31 | length, then the bytes, padded to 16). An LSO WQE
has the LSO segment (`mlx4_wqe_lso_seg`) between the two: mss << 16 | header size, then the
headers, padded to 16 bytes; the data segments that follow carry the TCP payload.

The owner bit says whose a WQE is: the driver sets it to the wrap parity of its producer
(`(ring->prod & ring->size) ? MLX4_EN_BIT_DESC_OWN : 0`) and writes the control word last. A
ring starts zeroed and freed TXBBs are stamped with the old parity, so a WQE is posted when its
owner bit matches the device's pass and its opcode is not NOP (a zeroed TXBB).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from . import cq

TXBB = 64
LOG_TXBB = 6
SEG = 16  # the unit of the WQE size (DS_SIZE)
CTRL_SIZE = 16
OWNER = 1 << 31
OPCODE_MASK = 0x1F
OPCODE_NOP = 0x00
OPCODE_SEND = 0x0A  # MLX4_OPCODE_SEND
OPCODE_LSO = 0x0E  # MLX4_OPCODE_LSO: offered (QUERY_DEV_CAP flags bit 15)
SIZE_MASK = 0x3F  # fence_size bits 5:0

FLAG_SOLICITED = 1 << 1  # srcrb_flags (MLX4_WQE_CTRL_*)
FLAG_CQ_UPDATE = 3 << 2
FLAG_IP_CSUM = 1 << 4
FLAG_L4_CSUM = 1 << 5
INS_CVLAN = 1 << 6  # ins_vlan
INS_SVLAN = 1 << 7
INLINE = 1 << 31
INLINE_LEN_MASK = 0x3FF  # an inline segment never crosses a 64-byte boundary


class WqeError(Exception):
    """A WQE the hardware completes in error (`mlx4_err_cqe` syndrome)."""

    def __init__(self, syndrome: int, message: str) -> None:
        super().__init__(message)
        self.syndrome = syndrome


@dataclass(frozen=True)
class Ctrl:
    owner: int
    opcode: int
    size: int  # in bytes (a multiple of 16)
    vlan_tag: int
    ins_vlan: int
    flags: int

    @classmethod
    def decode(cls, raw: bytes) -> Ctrl:
        owner_opcode, vlan_tag, ins_vlan, fence_size, flags = struct.unpack_from(">IHBBI", raw, 0)
        return cls(
            owner=owner_opcode >> 31,
            opcode=owner_opcode & OPCODE_MASK,
            size=(fence_size & SIZE_MASK) * SEG,
            vlan_tag=vlan_tag,
            ins_vlan=ins_vlan,
            flags=flags & 0xFF,
        )

    @property
    def txbbs(self) -> int:
        return max(1, -(-self.size // TXBB))

    @property
    def signaled(self) -> bool:
        return self.flags & FLAG_CQ_UPDATE == FLAG_CQ_UPDATE

    @property
    def solicited(self) -> bool:
        return bool(self.flags & FLAG_SOLICITED)


@dataclass(frozen=True)
class Gather:
    """A data segment: `length` bytes at DMA address `addr`, through memory key `lkey`."""

    addr: int
    length: int
    lkey: int


Piece = bytes | Gather


def parse(ctrl: Ctrl, raw: bytes) -> list[Piece]:
    """The segments after the control segment of a SEND WQE of `ctrl.size` bytes (`raw`)."""
    if ctrl.opcode != OPCODE_SEND:
        raise WqeError(cq.LOCAL_QP_OP_ERR, f"opcode {ctrl.opcode:#04x} is not SEND")
    if ctrl.size <= CTRL_SIZE:
        raise WqeError(cq.LOCAL_LENGTH_ERR, f"WQE of {ctrl.size} bytes carries no data")
    return _segments(ctrl, raw, CTRL_SIZE)


@dataclass(frozen=True)
class Lso:
    """An LSO WQE: the MSS, the headers of every segment, the payload's pieces."""

    mss: int
    header: bytes
    pieces: list[Piece]


def parse_lso(ctrl: Ctrl, raw: bytes) -> Lso:
    """An LSO WQE of `ctrl.size` bytes (`raw`): `en_tx.c: mlx4_en_xmit`, the lso_header_size
    branch (headers copied into the LSO segment, the payload in data segments after it)."""
    if ctrl.opcode != OPCODE_LSO:
        raise WqeError(cq.LOCAL_QP_OP_ERR, f"opcode {ctrl.opcode:#04x} is not LSO")
    if ctrl.size < CTRL_SIZE + 4:
        raise WqeError(cq.LOCAL_LENGTH_ERR, f"LSO WQE of {ctrl.size} bytes has no LSO segment")
    (mss_hdr,) = struct.unpack_from(">I", raw, CTRL_SIZE)
    mss, hlen = mss_hdr >> 16, mss_hdr & 0xFFFF
    end = CTRL_SIZE + -(-(4 + hlen) // SEG) * SEG
    if end > ctrl.size:
        raise WqeError(
            cq.LOCAL_LENGTH_ERR, f"LSO header of {hlen} bytes overruns the {ctrl.size}-byte WQE"
        )
    if mss == 0:
        raise WqeError(cq.LOCAL_LENGTH_ERR, "LSO WQE with an MSS of 0")
    header = raw[CTRL_SIZE + 4 : CTRL_SIZE + 4 + hlen]
    return Lso(mss, header, _segments(ctrl, raw, end))


def _segments(ctrl: Ctrl, raw: bytes, pos: int) -> list[Piece]:
    pieces: list[Piece] = []
    while pos < ctrl.size:
        (count,) = struct.unpack_from(">I", raw, pos)
        if count & INLINE:
            n = count & ~INLINE
            if n > INLINE_LEN_MASK or pos + 4 + n > ctrl.size:
                raise WqeError(
                    cq.LOCAL_LENGTH_ERR,
                    f"inline segment at +{pos:#x} of {n} bytes overruns the {ctrl.size}-byte WQE",
                )
            pieces.append(raw[pos + 4 : pos + 4 + n])
            pos += -(-(4 + n) // SEG) * SEG
        else:
            if pos + SEG > ctrl.size:
                raise WqeError(cq.LOCAL_LENGTH_ERR, f"data segment at +{pos:#x} is cut short")
            lkey, addr = struct.unpack_from(">IQ", raw, pos + 4)
            if count:
                pieces.append(Gather(addr, count, lkey))
            pos += SEG
    return pieces
