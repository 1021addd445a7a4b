"""The port's frame arithmetic on its own: the Internet checksum and the receive parser's
checksum verdict (`frame.rx_checksum`), against a word-by-word reference."""

from __future__ import annotations

import random
import struct

import pytest

from cx3 import frame

from .test_cx3_rx import A, B, tcp_frame
from .test_cx3_tx import frame_bytes


def reference_sum16(data: bytes) -> int:
    """RFC 1071 as written: add the words, fold the carries."""
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f">{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


@pytest.mark.parametrize("size", [0, 1, 2, 3, 20, 1500, 1501, 9000])
def test_the_fast_sum_is_the_folded_word_sum(size: int) -> None:
    rng = random.Random(size)
    for data in (bytes(size), b"\xff" * size, rng.randbytes(size)):
        assert frame._sum16(data) == reference_sum16(data), data[:8]


def udp6_frame(payload: bytes) -> bytes:
    udp = struct.pack(">HHHH", 5000, 6000, 8 + len(payload), 0) + payload
    ip6 = struct.pack(">IHBB16s16s", 6 << 28, len(udp), 17, 64, b"\xfe\x80" + bytes(14), bytes(16))
    head = frame_bytes(14, ethertype=frame.ETHERTYPE_IPV6)
    return frame.offload_checksums(head + ip6 + udp, ip_csum=False, l4_csum=True)


def test_the_parser_verdicts() -> None:
    good = tcp_frame(b"x" * 100)
    assert frame.rx_checksum(good) == (
        frame.CQE_IPV4 | frame.CQE_IPOK | frame.CQE_TCP,
        frame.CSUM_GOOD,
    )
    padded = good + bytes(20)  # Ethernet padding after the IP datagram is not summed
    assert frame.rx_checksum(padded)[1] == frame.CSUM_GOOD
    assert frame.rx_checksum(udp6_frame(b"y" * 33)) == (
        frame.CQE_IPV6 | frame.CQE_IPOK | frame.CQE_UDP,
        frame.CSUM_GOOD,
    )
    bad_header = bytearray(good)
    bad_header[14 + 8] ^= 1  # the TTL: the IPv4 header checksum no longer holds
    status, _ = frame.rx_checksum(bytes(bad_header))
    assert status & frame.CQE_IPV4 and not status & frame.CQE_IPOK
    fragment = bytearray(good)
    struct.pack_into(">H", fragment, 14 + 6, 0x2000)  # more fragments
    status, csum = frame.rx_checksum(bytes(fragment))
    assert status & frame.CQE_IPV4F and not status & frame.CQE_TCP and csum == 0
    truncated = good[:40]  # the IP length promises more than arrived
    assert frame.rx_checksum(truncated) == (0, 0)
    assert frame.rx_checksum(frame_bytes(60)) == (0, 0)  # not IP


def test_a_udp_datagram_sent_without_checksum_passes() -> None:
    udp = struct.pack(">HHHH", 5000, 6000, 12, 0) + b"abcd"
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 32, 1, 0, 64, 17, 0, A, B)
    data = frame.offload_checksums(frame_bytes(14, ethertype=0x0800) + ip + udp, True, False)
    assert frame.rx_checksum(data) == (
        frame.CQE_IPV4 | frame.CQE_IPOK | frame.CQE_UDP,
        frame.CSUM_GOOD,
    )
