"""RSS: which ring QP an RSS indirection QP sends a frame to (`en_rx.c:
mlx4_en_config_rss_steer`, `include/linux/mlx4/qp.h`: struct mlx4_rss_context).

The context sits in the QP context at pri_path + 0x24: base_qpn (log2 of the ring count in bits
31:24), default_qpn (non-IP frames), hash function (1 Toeplitz, 0 XOR), the header fields to
hash (MLX4_RSS_* flags), the 40-byte Toeplitz key. The ring is the hash's low bits.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from . import frame

OFFSET = 0x18 + 0x24  # pri_path + MLX4_RSS_OFFSET_IN_QPC_PRI_PATH
KEY_SIZE = 40
HASH_XOR, HASH_TOP = 0, 1
UDP_IPV6, UDP_IPV4, TCP_IPV6, IPV6, TCP_IPV4, IPV4 = (1 << i for i in range(6))


@dataclass(frozen=True)
class RssContext:
    base_qpn: int
    log_rings: int
    default_qpn: int
    hash_fn: int
    flags: int
    key: bytes

    @classmethod
    def decode(cls, ctx: bytes) -> RssContext:
        base, default, hash_fn, flags = struct.unpack_from(">II2xBB", ctx, OFFSET)
        return cls(
            base_qpn=base & 0xFFFFFF,
            log_rings=(base >> 24) & 0x1F,
            default_qpn=default & 0xFFFFFF,
            hash_fn=hash_fn,
            flags=flags,
            key=bytes(ctx[OFFSET + 12 : OFFSET + 12 + KEY_SIZE]),
        )

    def select(self, data: bytes) -> tuple[int, int]:
        """(ring QP, hash) for a frame; non-IP frames go to the default QP with hash 0."""
        fields = self.hash_input(data)
        if fields is None:
            return self.default_qpn, 0
        value = toeplitz(self.key, fields) if self.hash_fn == HASH_TOP else xor_hash(fields)
        return self.base_qpn + (value & ((1 << self.log_rings) - 1)), value

    def hash_input(self, data: bytes) -> bytes | None:
        ethertype, l3 = frame.l3_offset(data)
        if ethertype == frame.ETHERTYPE_IPV4 and len(data) >= l3 + 20 and self.flags & IPV4:
            ihl = (data[l3] & 0xF) * 4
            addrs, proto = data[l3 + 12 : l3 + 20], data[l3 + 9]
            fragment = struct.unpack_from(">H", data, l3 + 6)[0] & 0x3FFF
            l4, tcp, udp = l3 + ihl, TCP_IPV4, UDP_IPV4
        elif ethertype == frame.ETHERTYPE_IPV6 and len(data) >= l3 + 40 and self.flags & IPV6:
            addrs, proto, fragment = data[l3 + 8 : l3 + 40], data[l3 + 6], 0
            l4, tcp, udp = l3 + 40, TCP_IPV6, UDP_IPV6
        else:
            return None
        ports = data[l4 : l4 + 4] if len(data) >= l4 + 4 and not fragment else b""
        if (proto == frame.PROTO_TCP and self.flags & tcp) or (
            proto == frame.PROTO_UDP and self.flags & udp
        ):
            return addrs + ports
        return addrs


def toeplitz(key: bytes, data: bytes) -> int:
    """The Microsoft RSS Toeplitz hash of `data` under `key` (32-bit result)."""
    k = int.from_bytes(key, "big")
    width = 8 * len(key)
    result = 0
    for i, byte in enumerate(data):
        for bit in range(8):
            if byte & (0x80 >> bit):
                shift = width - 32 - (8 * i + bit)
                window = k >> shift if shift >= 0 else k << -shift
                result ^= window & 0xFFFFFFFF
    return result


def xor_hash(data: bytes) -> int:
    value = 0
    for i in range(0, len(data) - len(data) % 4, 4):
        value ^= int.from_bytes(data[i : i + 4], "big")
    return value
