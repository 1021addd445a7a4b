"""Receive through the real vfio-user wire: port 1 transmits, the cable carries the frame to
port 2, whose steering, RSS and receive ring take it (`en_rx.c` builds the rings the way
`RxRing` does: one stamped 64-byte send WQE, then 16-byte receive WQEs, the producer count in
the doorbell record).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from cx3 import frame, rss
from cx3.device import Cx3Device
from cx3.opcodes import Opcode
from cx3.qp import QpState

from .test_cx3_en import UAR, EnDriver
from .test_cx3_en import en as en  # the fixture
from .test_cx3_tx import MPT_INDEX, TxRing, frame_bytes, gather, inline

MAC1, MAC2 = 0x0002C9000001, 0x0002C9000002
RX_CQN, RX_QPN, RSS_QPN = 0x90, 0x240, 0x250
RX_MTT = 6000


@dataclass
class RxRing:
    """`mlx4_en_activate_rx_rings` + `mlx4_en_config_rss_qp` for one ring QP on port 2."""

    drv: EnDriver
    qpn: int
    cqn: int
    buf: int  # the ring buffer (one page)
    db: int  # the QP's doorbell record (receive producer); the CQ's is at db + 8
    cq_pages: list[int]
    frags: list[list[tuple[int, int]]]  # per WQE: (address, size) of its data segments
    size: int
    prod: int = 0
    cons: int = 0

    @classmethod
    def create(
        cls,
        drv: EnDriver,
        qpn: int,
        cqn: int,
        mtt: int,
        size: int = 8,
        frag_sizes: tuple[int, ...] = (2048,),
    ) -> RxRing:
        guest = drv.drv.guest
        db = guest.alloc()
        guest.write(db, bytes(4096))
        cq_page = guest.alloc()
        guest.write(cq_page, bytes(4096))
        drv.drv.write_mtt(mtt, [cq_page])
        cq_ctx = bytearray(drv.cq_context(6, mtt))
        struct.pack_into(">Q", cq_ctx, 0x38, db + 8)  # its own doorbell record
        drv.cmd(Opcode.SW2HW_CQ, drv.box(bytes(cq_ctx)), cqn)
        cq_pages = [cq_page]
        buf = guest.alloc()
        guest.write(buf, bytes(4096))
        drv.drv.write_mtt(mtt + 100, [buf])
        stride = 16 * len(frag_sizes)
        frags = []
        for i in range(size):
            addrs = []
            for j, n in enumerate(frag_sizes):
                addr = guest.alloc(n)
                addrs.append((addr, n))
                guest.write(buf + 64 + i * stride + 16 * j, gather(addr, n))
            frags.append(addrs)
        ring = cls(drv, qpn, cqn, buf, db, cq_pages, frags, size)
        for op, state in (
            (Opcode.RST2INIT_QP, QpState.INIT),
            (Opcode.INIT2RTR_QP, QpState.RTR),
            (Opcode.RTR2RTS_QP, QpState.RTS),
        ):
            drv.cmd(op, ring.inbox(state, stride, mtt + 100), qpn)
        return ring

    def inbox(self, state: QpState, stride: int, mtt: int) -> int:
        ctx = bytearray(0xF8)
        struct.pack_into(">II", ctx, 0, state << 28 | 7 << 16, 1)
        ctx[0x09] = (self.size.bit_length() - 1) << 3 | (stride.bit_length() - 1 - 4)
        ctx[0x0A] = 6 - 4  # one 64-byte send WQE
        struct.pack_into(">II", ctx, 0x0C, UAR, self.qpn)
        ctx[0x38] = 0x83 | 1 << 6  # port 2
        struct.pack_into(">I", ctx, 0x7C, self.cqn)
        struct.pack_into(">IQ", ctx, 0x9C, self.cqn, self.db)
        struct.pack_into(">I", ctx, 0xCC, 8 * mtt)
        return self.drv.box(bytes(8) + bytes(ctx))

    def post(self, n: int) -> None:
        """`mlx4_en_update_rx_prod_db`: hand over `n` more WQEs."""
        self.prod += n
        self.drv.drv.guest.write(self.db, struct.pack(">I", self.prod & 0xFFFF))

    def poll(self) -> list[tuple[bytes, bytes]]:
        """`mlx4_en_process_rx_cq`: (CQE, frame) pairs; the ring index follows the CQ's."""
        guest = self.drv.drv.guest
        found = []
        while True:
            off = (self.cons % 64) * 32
            cqe = guest.read(self.cq_pages[0] + off, 32)
            if bool(cqe[31] & 0x80) != bool(self.cons & 64):
                break
            length = struct.unpack_from(">I", cqe, 0x14)[0]
            data = b""
            for addr, n in self.frags[self.cons % self.size]:
                data += guest.read(addr, n)
            found.append((cqe, data[:length]))
            self.cons += 1
        guest.write(self.db + 8, struct.pack(">I", self.cons))  # mlx4_cq_set_ci
        return found


@pytest.fixture
def link(en: tuple[Cx3Device, EnDriver]) -> Iterator[tuple[Cx3Device, EnDriver, TxRing]]:
    """Both ports open, port 2 knows its MAC; a TX ring on port 1."""
    dev, drv = en
    drv.cmd(Opcode.SW2HW_MPT, drv.box(drv.mpt(MPT_INDEX)), MPT_INDEX)
    for port in (1, 2):
        drv.cmd(Opcode.INIT_PORT, in_mod=port)
    drv.async_eqes()
    assert drv.set_port(2, drv.mac_table({0: MAC2}), port=2) == 0
    tx = TxRing.create(drv)
    yield dev, drv, tx


def rqp_calc(drv: EnDriver, base: int, promisc: bool = False) -> None:
    """`mlx4_SET_PORT_qpn_calc` for port 2."""
    data = struct.pack(">IxB14xII", base, 7, promisc << 31 | base, 2 << 30 | base)
    assert drv.set_port(1, data, port=2) == 0


def port2_ring(drv: EnDriver, posted: int = 8, frag_sizes: tuple[int, ...] = (2048,)) -> RxRing:
    """The ring QP of port 2, RQP_CALC's base, with `posted` WQEs handed over."""
    ring = RxRing.create(drv, RX_QPN, RX_CQN, RX_MTT, frag_sizes=frag_sizes)
    rqp_calc(drv, RX_QPN)
    ring.post(posted)
    return ring


def send(tx: TxRing, data: bytes) -> None:
    """Port 1 transmits `data` (gathered from guest memory)."""
    addr = tx.drv.drv.guest.alloc(len(data))
    tx.drv.drv.guest.write(addr, data)
    tx.post(gather(addr, len(data)))
    tx.poll()


def test_a_frame_crosses_the_cable_into_the_ring(
    link: tuple[Cx3Device, EnDriver, TxRing],
) -> None:
    dev, drv, tx = link
    ring = port2_ring(drv, frag_sizes=(64, 2048))
    drv.uar_write(0x20, struct.pack(">II", 2 << 24 | RX_CQN, 0))  # armed
    data = frame_bytes(1000, dst=MAC2)
    send(tx, data)
    ((cqe, got),) = ring.poll()
    assert got == data  # scattered over a 64-byte and a 2 KiB fragment
    assert struct.unpack_from(">I", cqe, 0)[0] == RX_QPN and cqe[31] & 0x7F == 0x01
    events = drv.async_eqes()
    assert [(e[1], struct.unpack_from(">I", e, 4)[0]) for e in events] == [(0, RX_CQN)]
    counters = dev.firmware.state.ports[2].counters
    assert counters["RTOT_novlan"] == 1 and counters["ROCT_novlan"] == 1004
    out = drv.drv.cmd_box(Opcode.DUMP_ETH_STATS, in_mod=2, size=2988)
    assert struct.unpack_from(">Q", out, 8 * 168)[0] == 1  # RTOT_novlan
    assert dev.firmware.state.qps[RX_QPN].rq_next == 1


def test_steering_decides_what_is_delivered(link: tuple[Cx3Device, EnDriver, TxRing]) -> None:
    dev, drv, tx = link
    ring = port2_ring(drv)
    counters = dev.firmware.state.ports[2].counters
    send(tx, frame_bytes(60, dst=0x0002C9AAAAAA))  # unknown unicast
    assert ring.poll() == [] and counters["RDROP"] == 1
    drv.cmd(Opcode.SET_MCAST_FLTR, 1 << 63 | frame.BROADCAST, 2, op_mod=0)
    drv.cmd(Opcode.SET_MCAST_FLTR, 0, 2, op_mod=2)  # filter on: broadcast only
    send(tx, frame_bytes(60, dst=frame.BROADCAST))
    send(tx, frame_bytes(60, dst=0x01005E000001))  # not in the filter
    assert len(ring.poll()) == 1 and counters["RDROP"] == 2
    drv.cmd(Opcode.SET_MCAST_FLTR, 0, 2, op_mod=1)  # filter off: all multicast
    send(tx, frame_bytes(60, dst=0x01005E000001))
    assert len(ring.poll()) == 1
    rqp_calc(drv, RX_QPN, promisc=True)
    send(tx, frame_bytes(60, dst=0x0002C9AAAAAA))
    assert len(ring.poll()) == 1

    rqp_calc(drv, RX_QPN)
    tagged = frame.insert_vlan(frame_bytes(100, dst=MAC2), frame.TPID_CVLAN, 0x6000 | 42)
    send(tx, tagged)  # VID 42 is not in the VLAN filter
    assert ring.poll() == [] and counters["RDROP"] == 3
    words = [0] * 128
    words[127 - 1] = 1 << 10  # VID 42
    drv.cmd(Opcode.SET_VLAN_FLTR, drv.box(struct.pack(">128I", *words)), 2)
    send(tx, tagged)
    ((cqe, got),) = ring.poll()
    assert got == frame_bytes(100, dst=MAC2)  # stripped, and reported in the CQE
    assert struct.unpack_from(">I", cqe, 0)[0] >> 29 & 1 and cqe[0x0C:0x0E] == b"\x60\x2a"
    assert counters["RTOT_prio_3"] == 2 and counters["R1Q_prio_3"] == 2  # the drop counts too


def test_no_posted_wqe_or_too_long_a_frame_is_dropped(
    link: tuple[Cx3Device, EnDriver, TxRing],
) -> None:
    dev, drv, tx = link
    ring = port2_ring(drv, posted=0, frag_sizes=(256,))
    counters = dev.firmware.state.ports[2].counters
    send(tx, frame_bytes(100, dst=MAC2))  # nothing posted yet
    assert counters["RdropOvflw"] == 1
    ring.post(1)
    send(tx, frame_bytes(300, dst=MAC2))  # longer than the one 256-byte fragment
    assert counters["RdropLength"] == 1 and ring.poll() == []
    send(tx, frame_bytes(200, dst=MAC2))
    assert len(ring.poll()) == 1
    send(tx, frame_bytes(200, dst=MAC2))  # the one WQE is used up
    assert counters["RdropOvflw"] == 2
    assert not [e for e in dev.events.since(0) if e["kind"] == "error"]


def pause(drv: EnDriver, port: int, tx: bool, rx: bool, pfctx: int = 0, pfcrx: int = 0) -> None:
    """`mlx4_SET_PORT_general`: global pause sent (pptx) and obeyed (pprx) on `port`, or
    priority flow control for the priorities of the `pfctx`/`pfcrx` bitmaps."""
    general = struct.pack(">3xB2xHBB2xBB", 7, 1526, tx << 7, pfctx, rx << 7, pfcrx)
    assert drv.set_port(0, general, port=port) == 0


def test_a_full_ring_holds_the_frame_when_the_ports_pause(
    link: tuple[Cx3Device, EnDriver, TxRing],
) -> None:
    """802.3x as mlx4_en sets it up by default: port 2, out of receive WQEs, pauses port 1,
    which keeps the frame and the rest of its send queue until the driver has posted WQEs
    and rung (it arms its CQ after refilling); nothing is dropped."""
    dev, drv, tx = link
    ring = port2_ring(drv, posted=1)
    counters = dev.firmware.state.ports[2].counters
    pause(drv, 2, tx=True, rx=False)  # port 1 does not obey: dropped
    send(tx, frame_bytes(100, dst=MAC2))
    send(tx, frame_bytes(100, dst=MAC2))
    assert len(ring.poll()) == 1 and counters["RdropOvflw"] == 1
    pause(drv, 1, tx=False, rx=True)
    frames = [frame_bytes(101 + i, dst=MAC2) for i in range(2)]
    for data in frames:
        addr = drv.drv.guest.alloc(len(data))
        drv.drv.guest.write(addr, data)
        tx.post(gather(addr, len(data)))
    assert ring.poll() == [] and tx.poll() == []  # held: neither received nor completed
    ring.post(1)
    assert ring.poll() == []  # the card has not looked again
    arm = struct.pack(">II", 2 << 24 | RX_CQN, ring.cons)
    drv.uar_write(0x20, arm)
    assert [got for _, got in ring.poll()] == frames[:1] and len(tx.poll()) == 1
    ring.post(1)
    drv.uar_write(0x20, arm)
    assert [got for _, got in ring.poll()] == frames[1:] and len(tx.poll()) == 1
    assert counters["RdropOvflw"] == 1 and counters["RTOT_novlan"] == 4
    assert dev.datapath.counts["rx_paused"] >= 2


def test_priority_flow_control_holds_only_its_priorities(
    link: tuple[Cx3Device, EnDriver, TxRing],
) -> None:
    dev, drv, tx = link
    ring = port2_ring(drv, posted=0)
    counters = dev.firmware.state.ports[2].counters
    words = [0] * 128
    words[127 - 1] = 1 << 10  # VID 42 passes port 2's VLAN filter
    drv.cmd(Opcode.SET_VLAN_FLTR, drv.box(struct.pack(">128I", *words)), 2)
    pause(drv, 2, tx=False, rx=False, pfctx=1 << 3)
    pause(drv, 1, tx=False, rx=False, pfcrx=1 << 3)
    send(tx, frame_bytes(100, dst=MAC2))  # priority 0: not paused, dropped
    assert counters["RdropOvflw"] == 1
    tagged = frame.insert_vlan(frame_bytes(100, dst=MAC2), frame.TPID_CVLAN, 3 << 13 | 42)
    addr = drv.drv.guest.alloc(len(tagged))
    drv.drv.guest.write(addr, tagged)
    tx.post(gather(addr, len(tagged)))
    assert tx.poll() == [] and counters["RdropOvflw"] == 1  # priority 3: held
    ring.post(1)
    drv.uar_write(0x20, struct.pack(">II", 2 << 24 | RX_CQN, 0))
    assert len(ring.poll()) == 1 and len(tx.poll()) == 1


def test_a_bad_receive_buffer_completes_in_error(
    link: tuple[Cx3Device, EnDriver, TxRing],
) -> None:
    dev, drv, tx = link
    ring = port2_ring(drv, posted=0)
    drv.drv.guest.write(ring.buf + 64, gather(0xDEAD0000000, 2048))  # outside guest memory
    ring.post(8)
    send(tx, frame_bytes(100, dst=MAC2))
    ((cqe, _),) = ring.poll()
    assert cqe[31] & 0x7F == 0x1E and cqe[0x1B] == 0x04  # error CQE, LOCAL_PROT_ERR
    assert dev.firmware.state.qps[RX_QPN].state == QpState.ERR
    send(tx, frame_bytes(100, dst=MAC2))
    assert ring.poll() == []  # an ERR QP receives nothing


def test_rss_spreads_flows_over_the_rings(link: tuple[Cx3Device, EnDriver, TxRing]) -> None:
    _, drv, tx = link
    rings = [RxRing.create(drv, RX_QPN + i, RX_CQN + i, RX_MTT + 10 * i, size=32) for i in (0, 1)]
    for r in rings:
        r.post(32)
    key = bytes(range(1, 41))
    ctx = bytearray(0xF8)
    struct.pack_into(">II", ctx, 0, 3 << 28 | 7 << 16 | 1 << 13, 1)  # an RSS QP
    ctx[0x38] = 0x83 | 1 << 6
    struct.pack_into(">IIxxBB", ctx, rss.OFFSET, 1 << 24 | RX_QPN, RX_QPN, 1, 0x3C)
    ctx[rss.OFFSET + 12 : rss.OFFSET + 52] = key
    struct.pack_into(">I", ctx, 0x7C, RX_CQN)
    struct.pack_into(">I", ctx, 0x9C, RX_CQN)
    for op in (Opcode.RST2INIT_QP, Opcode.INIT2RTR_QP, Opcode.RTR2RTS_QP):
        drv.cmd(op, drv.box(bytes(8) + bytes(ctx)), RSS_QPN)
    rqp_calc(drv, RSS_QPN)

    def tcp(sport: int) -> bytes:
        ip = struct.pack(
            ">BBHHHBBH4s4s",
            0x45,
            0,
            40,
            0,
            0,
            64,
            6,
            0,
            bytes([10, 99, 0, 1]),
            bytes([10, 99, 0, 2]),
        )
        return frame_bytes(14, dst=MAC2, ethertype=0x0800) + ip + struct.pack(">HH16x", sport, 80)

    expected = [0, 0]
    for sport in range(1000, 1016):
        hash_input = bytes([10, 99, 0, 1, 10, 99, 0, 2]) + struct.pack(">HH", sport, 80)
        expected[rss.toeplitz(key, hash_input) & 1] += 1
        send(tx, tcp(sport))
    send(tx, frame_bytes(60, dst=MAC2))  # not IP: the default QP (ring 0)
    got = [r.poll() for r in rings]
    assert [len(g) for g in got] == [expected[0] + 1, expected[1]] and 0 not in expected
    cqe, _ = got[1][0]
    assert struct.unpack_from(">I", cqe, 4)[0] & 1 == 1  # the hash, in immed_rss_invalid


def test_toeplitz_matches_the_published_vector() -> None:
    key = bytes.fromhex(
        "6d5a56da255b0ec24167253d43a38fb0d0ca2bcbae7b30b477cb2da38030f20c6a42b73bbeac01fa"
    )
    # 66.9.149.187:2794 -> 161.142.100.80:1766 (Microsoft's RSS verification suite)
    ipv4 = bytes([66, 9, 149, 187, 161, 142, 100, 80])
    assert rss.toeplitz(key, ipv4) == 0x323E8FC2
    assert rss.toeplitz(key, ipv4 + struct.pack(">HH", 2794, 1766)) == 0x51CCC178


def test_pulling_the_cable_takes_both_ports_down(
    link: tuple[Cx3Device, EnDriver, TxRing],
) -> None:
    dev, drv, tx = link
    ring = port2_ring(drv)
    dev.set_link(False)
    eqes = drv.async_eqes()
    assert sorted((e[1], e[3], e[0x0C] >> 4) for e in eqes) == [(0x09, 1, 1), (0x09, 1, 2)]
    assert not drv.query_port(1)[0] & 0x80 and not drv.query_port(2)[0] & 0x80
    tx.post(inline(frame_bytes(60, dst=MAC2)))
    assert len(tx.poll()) == 1  # the send still completes; the frame is lost
    assert ring.poll() == [] and dev.firmware.state.ports[1].counters["TDROP"] == 1
    dev.set_link(True)
    assert sorted(e[3] for e in drv.async_eqes()) == [4, 4]
    send(tx, frame_bytes(60, dst=MAC2))
    assert len(ring.poll()) == 1


A, B = bytes([10, 99, 0, 1]), bytes([10, 99, 0, 2])


def tcp_frame(payload: bytes, dst: int = MAC2) -> bytes:
    """An Ethernet/IPv4/TCP frame with both checksums right."""
    tcp = struct.pack(">HHIIBBHHH", 40000, 5201, 1, 0, 5 << 4, 0x18, 512, 0, 0) + payload
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 7, 0x4000, 64, 6, 0, A, B)
    head = frame_bytes(14, dst=dst, ethertype=0x0800)
    return frame.offload_checksums(head + ip + tcp, ip_csum=True, l4_csum=True)


def test_the_receive_cqe_carries_the_checksum_verdict(
    link: tuple[Cx3Device, EnDriver, TxRing],
) -> None:
    """A good TCP checksum: TCP | IPOK | IPV4 and checksum 0xFFFF (CHECKSUM_UNNECESSARY in
    mlx4_en); one flipped payload bit: the same flags, another checksum (the driver checks
    in software and drops it)."""
    _, drv, tx = link
    ring = port2_ring(drv)
    good = tcp_frame(bytes(range(256)) * 4)
    bad = bytearray(good)
    bad[-1] ^= 1
    send(tx, good)
    send(tx, bytes(bad))
    (cqe_good, got), (cqe_bad, _) = ring.poll()
    assert got == good
    flags = frame.CQE_IPV4 | frame.CQE_TCP | frame.CQE_IPOK
    assert struct.unpack_from(">H", cqe_good, 0x10)[0] == flags
    assert struct.unpack_from(">H", cqe_good, 0x1A)[0] == frame.CSUM_GOOD
    assert struct.unpack_from(">H", cqe_bad, 0x10)[0] == flags
    assert struct.unpack_from(">H", cqe_bad, 0x1A)[0] != frame.CSUM_GOOD
