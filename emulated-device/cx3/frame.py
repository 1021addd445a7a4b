"""Ethernet frames on the model's wire: VLAN tags, checksum offloads, padding, classification.

What the port hardware does to a frame between the WQE and the wire: insert the VLAN tag the
control segment asks for, fill in the IPv4 header and TCP/UDP checksums (mlx4_en offers
NETIF_F_IP_CSUM / IPV6_CSUM unconditionally and sets MLX4_WQE_CTRL_IP_CSUM / TCP_UDP_CSUM for
CHECKSUM_PARTIAL skbs), pad to the 60-byte minimum. And on receive: strip the outer C-VLAN tag
(the driver leaves stripping on unless NETIF_F_HW_VLAN_CTAG_RX is off: QP param3 bit 30).
"""

from __future__ import annotations

import struct

ETH_HLEN = 14
ETH_ZLEN = 60  # the minimum frame without FCS
FCS_LEN = 4
TPID_CVLAN = 0x8100
TPID_SVLAN = 0x88A8
ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_IPV6 = 0x86DD
PROTO_TCP = 6
PROTO_UDP = 17
# CQE status bits (include/linux/mlx4/cq.h, MLX4_CQE_STATUS_*): what the receive parser found.
CQE_IPV4 = 1 << 6
CQE_IPV4F = 1 << 7  # a fragment: no L4 verdict
CQE_IPV6 = 1 << 8
CQE_IPV4OPT = 1 << 9
CQE_TCP = 1 << 10
CQE_UDP = 1 << 11
CQE_IPOK = 1 << 12  # the IPv4 header checksum held (always, for IPv6)
CSUM_GOOD = 0xFFFF  # the CQE's checksum field: the L4 sum, all ones when it holds
BROADCAST = 0xFFFFFFFFFFFF


def dst_mac(frame: bytes) -> int:
    return int.from_bytes(frame[0:6], "big")


def src_mac(frame: bytes) -> int:
    return int.from_bytes(frame[6:12], "big")


def is_broadcast(frame: bytes) -> bool:
    return frame[0:6] == b"\xff" * 6


def is_multicast(frame: bytes) -> bool:
    """Group address (broadcast included)."""
    return bool(frame[0] & 1)


def vlan_tci(frame: bytes) -> int | None:
    """The outer 802.1Q / 802.1ad tag's TCI, if the frame carries one."""
    if len(frame) >= ETH_HLEN + 4:
        (tpid, tci) = struct.unpack_from(">HH", frame, 12)
        if tpid in (TPID_CVLAN, TPID_SVLAN):
            return int(tci)
    return None


def insert_vlan(frame: bytes, tpid: int, tci: int) -> bytes:
    return frame[:12] + struct.pack(">HH", tpid, tci) + frame[12:]


def strip_cvlan(frame: bytes) -> tuple[bytes, int | None]:
    """Remove the outer C-VLAN tag: (frame, TCI), or (frame, None) if untagged."""
    if len(frame) >= ETH_HLEN + 4 and struct.unpack_from(">H", frame, 12)[0] == TPID_CVLAN:
        return frame[:12] + frame[16:], int(struct.unpack_from(">H", frame, 14)[0])
    return frame, None


def pad(frame: bytes) -> bytes:
    return frame if len(frame) >= ETH_ZLEN else frame + bytes(ETH_ZLEN - len(frame))


def _sum16(data: bytes | bytearray) -> int:
    """The folded one's complement sum of `data`'s big-endian 16-bit words. As 2**16 = 1
    modulo 0xFFFF, it is the whole buffer as one number modulo 0xFFFF (one C loop, not one
    Python step per word), except that a non-zero sum folds to 0xFFFF, never to 0."""
    if len(data) % 2:
        data = bytes(data) + b"\0"
    number = int.from_bytes(data, "big")
    total = number % 0xFFFF
    return 0xFFFF if total == 0 and number else total


def checksum(data: bytes | bytearray, initial: int = 0) -> int:
    """The Internet checksum (RFC 1071) of `data`, folded with a partial sum `initial`."""
    total = _sum16(data) + initial
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def l3_offset(frame: bytes) -> tuple[int, int]:
    """(ethertype, offset of the L3 header), looking through up to two VLAN tags."""
    off = 12
    for _ in range(3):
        if off + 2 > len(frame):
            return 0, len(frame)
        (ethertype,) = struct.unpack_from(">H", frame, off)
        if ethertype not in (TPID_CVLAN, TPID_SVLAN):
            return int(ethertype), off + 2
        off += 4
    return 0, len(frame)


def pseudo_header(
    frame: bytes | bytearray, ethertype: int, l3: int, proto: int, length: int
) -> bytes:
    """The TCP/UDP checksum's pseudo-header: the IP addresses, the protocol, the L4 length."""
    if ethertype == ETHERTYPE_IPV4:
        return bytes(frame[l3 + 12 : l3 + 20]) + struct.pack(">BBH", 0, proto, length)
    return bytes(frame[l3 + 8 : l3 + 40]) + struct.pack(">IxxxB", length, proto)


def offload_checksums(frame: bytes, ip_csum: bool, l4_csum: bool) -> bytes:
    """Fill in the checksums a CHECKSUM_PARTIAL skb left to the NIC. Anything it cannot
    parse (truncated headers, other protocols, IPv4 fragments) goes out unchanged."""
    ethertype, l3 = l3_offset(frame)
    buf = bytearray(frame)
    if ethertype == ETHERTYPE_IPV4 and len(buf) >= l3 + 20:
        ihl = (buf[l3] & 0xF) * 4
        (total_len,) = struct.unpack_from(">H", buf, l3 + 2)
        if ihl < 20 or len(buf) < l3 + ihl:
            return frame
        if ip_csum:
            buf[l3 + 10 : l3 + 12] = b"\0\0"
            struct.pack_into(">H", buf, l3 + 10, checksum(buf[l3 : l3 + ihl]))
        (frag,) = struct.unpack_from(">H", buf, l3 + 6)
        if not l4_csum or frag & 0x3FFF:
            return bytes(buf)
        proto = buf[l3 + 9]
        l4 = l3 + ihl
        end = min(len(buf), l3 + total_len)
        pseudo = pseudo_header(buf, ETHERTYPE_IPV4, l3, proto, end - l4)
    elif ethertype == ETHERTYPE_IPV6 and len(buf) >= l3 + 40 and l4_csum:
        (payload_len,) = struct.unpack_from(">H", buf, l3 + 4)
        proto = buf[l3 + 6]
        l4 = l3 + 40
        end = min(len(buf), l4 + payload_len)
        pseudo = pseudo_header(buf, ETHERTYPE_IPV6, l3, proto, end - l4)
    else:
        return frame
    field = {PROTO_TCP: 16, PROTO_UDP: 6}.get(proto)
    if field is None or end < l4 + field + 2:
        return bytes(buf)
    buf[l4 + field : l4 + field + 2] = b"\0\0"
    value = checksum(buf[l4:end], _sum16(pseudo))
    if proto == PROTO_UDP and value == 0:
        value = 0xFFFF  # RFC 768: 0 means "no checksum"
    struct.pack_into(">H", buf, l4 + field, value)
    return bytes(buf)


def rx_checksum(frame: bytes) -> tuple[int, int]:
    """The receive parser's verdict on a frame (its C-VLAN tag already stripped): the CQE's
    status and checksum fields. For TCP or UDP over IPv4 (not a fragment) or IPv6 (no
    extension header) the checksum field is the one's complement sum over the pseudo-header
    and the segment: 0xFFFF exactly when the segment's checksum holds, which with IPOK and the
    L4 flag is what mlx4_en_process_rx_cq takes as CHECKSUM_UNNECESSARY. Anything else gets
    status 0 or no L4 flag, and the driver checks in software."""
    ethertype, l3 = l3_offset(frame)
    if ethertype == ETHERTYPE_IPV4 and len(frame) >= l3 + 20:
        ihl = (frame[l3] & 0xF) * 4
        (total_len, frag) = struct.unpack_from(">H2xH", frame, l3 + 2)
        end = l3 + total_len
        if ihl < 20 or end > len(frame) or total_len < ihl:
            return 0, 0
        status = CQE_IPV4 | (CQE_IPV4OPT if ihl > 20 else 0)
        if _sum16(frame[l3 : l3 + ihl]) == 0xFFFF:
            status |= CQE_IPOK
        if frag & 0x3FFF:
            return status | CQE_IPV4F, 0
        proto, l4 = frame[l3 + 9], l3 + ihl
        pseudo = pseudo_header(frame, ETHERTYPE_IPV4, l3, proto, end - l4)
    elif ethertype == ETHERTYPE_IPV6 and len(frame) >= l3 + 40:
        (payload_len,) = struct.unpack_from(">H", frame, l3 + 4)
        proto, l4 = frame[l3 + 6], l3 + 40
        end = l4 + payload_len
        if end > len(frame):
            return 0, 0
        status = CQE_IPV6 | CQE_IPOK
        pseudo = pseudo_header(frame, ETHERTYPE_IPV6, l3, proto, end - l4)
    else:
        return 0, 0
    flag = {PROTO_TCP: CQE_TCP, PROTO_UDP: CQE_UDP}.get(proto)
    if flag is None or end - l4 < (20 if proto == PROTO_TCP else 8):
        return status, 0
    if proto == PROTO_UDP and ethertype == ETHERTYPE_IPV4 and frame[l4 + 6 : l4 + 8] == b"\0\0":
        return status | flag, CSUM_GOOD  # RFC 768: no checksum sent, nothing to fail
    total = _sum16(pseudo) + _sum16(frame[l4:end])
    return status | flag, (total & 0xFFFF) + (total >> 16)


TCP_FIN = 0x01
TCP_PSH = 0x08
TCP_CWR = 0x80


def segment(header: bytes, payload: bytes, mss: int) -> list[bytes]:
    """LSO: cut `payload` into `mss`-byte pieces, each behind a copy of `header` (Ethernet,
    IPv4 or IPv6, TCP) fixed up as `tcp_gso_segment` would: IP length (IPv4 id + i, header
    checksum), TCP sequence number + offset, PSH and FIN only on the last segment, CWR only on
    the first, TCP checksum over the pseudo-header. Raises ValueError on headers that are not
    Ethernet/IP/TCP ending exactly where `header` ends."""
    ethertype, l3 = l3_offset(header)
    if ethertype == ETHERTYPE_IPV4 and len(header) >= l3 + 20:
        ihl = (header[l3] & 0xF) * 4
        proto = header[l3 + 9] if ihl >= 20 else -1
        l4 = l3 + ihl
    elif ethertype == ETHERTYPE_IPV6 and len(header) >= l3 + 40:
        proto = header[l3 + 6]
        l4 = l3 + 40
    else:
        raise ValueError(f"LSO header of {len(header)} bytes: not IPv4/IPv6")
    if proto != PROTO_TCP or len(header) < l4 + 20:
        raise ValueError(f"LSO header: protocol {proto} or too short for TCP")
    if l4 + (header[l4 + 12] >> 4) * 4 != len(header):
        raise ValueError(f"LSO header of {len(header)} bytes does not end with the TCP header")
    (seq,) = struct.unpack_from(">I", header, l4 + 4)
    (ip_id,) = struct.unpack_from(">H", header, l3 + 4) if ethertype == ETHERTYPE_IPV4 else (0,)
    count = max(1, -(-len(payload) // mss))
    out = []
    for i in range(count):
        chunk = payload[i * mss : (i + 1) * mss]
        buf = bytearray(header) + chunk
        if ethertype == ETHERTYPE_IPV4:
            struct.pack_into(">HH", buf, l3 + 2, len(buf) - l3, (ip_id + i) & 0xFFFF)
        else:
            struct.pack_into(">H", buf, l3 + 4, len(buf) - l4)
        struct.pack_into(">I", buf, l4 + 4, (seq + i * mss) & 0xFFFFFFFF)
        if i < count - 1:
            buf[l4 + 13] &= ~(TCP_FIN | TCP_PSH) & 0xFF
        if i > 0:
            buf[l4 + 13] &= ~TCP_CWR & 0xFF
        out.append(offload_checksums(bytes(buf), True, True))
    return out
