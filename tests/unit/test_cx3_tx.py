"""Transmit through the real vfio-user wire: send WQEs, the doorbell, CQEs, completion events.

`TxRing` posts WQEs the way `en_tx.c: mlx4_en_xmit` builds them (owner bit = wrap parity of
the TXBB producer, control word written last, freed TXBBs stamped) and polls the send CQ the
way `mlx4_en_process_tx_cq` does (owner bit XNOR consumer parity).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from cx3 import cq as cqmod
from cx3 import frame, stats
from cx3.device import Cx3Device
from cx3.opcodes import Opcode
from cx3.qp import QpState

from .test_cx3_en import QPN, RAM_BASE, TX_CQN, UAR, EnDriver
from .test_cx3_en import en as en  # the fixture

MPT_INDEX = 0x10
LKEY = (MPT_INDEX >> 24 | MPT_INDEX << 8) & 0xFFFFFFFF  # `mr.c: hw_index_to_key`
CQ_DB = RAM_BASE + 0x100  # EnDriver.cq_context's doorbell record
SQ_MTT = 4096
CTRL_FLAGS = 3 << 2 | 1 << 1  # priv->ctrl_flags: CQ_UPDATE | SOLICITED
SEND, NOP, LSO = 0x0A, 0x00, 0x0E
STAMP = 0x7FFFFFFF


@pytest.fixture
def tx(en: tuple[Cx3Device, EnDriver]) -> Iterator[tuple[Cx3Device, TxRing]]:
    dev, drv = en
    drv.cmd(Opcode.SW2HW_MPT, drv.box(drv.mpt(MPT_INDEX)), MPT_INDEX)
    yield dev, TxRing.create(drv)


def frame_bytes(n: int, dst: int = 0x0002C9000002, ethertype: int = 0x88B5) -> bytes:
    body = bytes(range(256)) * (n // 256 + 1)
    return (
        dst.to_bytes(6, "big")
        + (0x0002C9000001).to_bytes(6, "big")
        + struct.pack(">H", ethertype)
        + body[: n - 14]
    )


@dataclass
class TxRing:
    drv: EnDriver
    sq_pages: list[int]
    cq_pages: list[int]
    log_size: int = 6  # 64 TXBBs: one 4 KiB page
    cq_log: int = 6
    prod: int = 0  # TXBBs posted
    cons: int = 0  # CQEs polled
    sent: list[bytes] = field(default_factory=list)

    @classmethod
    def create(cls, drv: EnDriver, cq_log: int = 6) -> TxRing:
        cq_pages = drv.create_cq(TX_CQN, log_size=cq_log)
        drv.drv.guest.write(CQ_DB, bytes(8))
        page = drv.drv.guest.alloc()
        drv.drv.guest.write(page, bytes(4096))
        drv.drv.write_mtt(SQ_MTT, [page])
        for op, state in (
            (Opcode.RST2INIT_QP, QpState.INIT),
            (Opcode.INIT2RTR_QP, QpState.RTR),
            (Opcode.RTR2RTS_QP, QpState.RTS),
        ):
            drv.cmd(op, cls.qp_inbox(drv, state), QPN)
        return cls(drv, [page], cq_pages, cq_log=cq_log)

    @staticmethod
    def qp_inbox(drv: EnDriver, state: QpState) -> int:
        """`mlx4_en_fill_qp_context` for a TX ring of 64 TXBBs, its buffer at MTT SQ_MTT."""
        ctx = bytearray(0xF8)
        struct.pack_into(">II", ctx, 0, state << 28 | 7 << 16, 1)
        ctx[0x0A] = 6 << 3 | 2
        struct.pack_into(">II", ctx, 0x0C, UAR, QPN)
        ctx[0x38] = 0x83  # port 1
        struct.pack_into(">I", ctx, 0x7C, TX_CQN)
        struct.pack_into(">IQ", ctx, 0x9C, TX_CQN, RAM_BASE + 0x200)
        struct.pack_into(">I", ctx, 0xCC, 8 * SQ_MTT)
        return drv.box(bytes(8) + bytes(ctx))

    @property
    def size(self) -> int:
        return 1 << self.log_size

    def _write(self, txbb: int, data: bytes) -> None:
        """Write WQE bytes from TXBB `txbb` on, wrapping at the end of the ring."""
        ring = self.size * 64
        start = (txbb % self.size) * 64
        first = data[: ring - start]
        self.drv.drv.guest.write(self.sq_pages[0] + start, first)
        if len(data) > len(first):
            self.drv.drv.guest.write(self.sq_pages[0], data[len(first) :])

    def post(
        self,
        segments: bytes,
        flags: int = CTRL_FLAGS,
        opcode: int = SEND,
        vlan: int | None = None,
        doorbell: bool = True,
    ) -> int:
        """Post one WQE (control segment + `segments`); returns its first TXBB index."""
        size = 16 + len(segments)
        assert size % 16 == 0
        index = self.prod
        owner = 1 << 31 if self.prod & self.size else 0
        vlan_tag, ins = (0, 0) if vlan is None else (vlan, 1 << 6)
        ctrl = struct.pack(">IHBBII", 0, vlan_tag, ins, size // 16, flags, 0)
        self._write(index, ctrl + segments)
        self._write(index, struct.pack(">I", owner | opcode))  # dma_wmb(); owner_opcode last
        self.prod += -(-size // 64)
        if doorbell:
            self.ring()
        return index

    def ring(self) -> None:
        self.drv.uar_write(0x14, (QPN << 8).to_bytes(4, "big"))

    def stamp(self, first: int, txbbs: int) -> None:
        """`mlx4_en_stamp_wqe`: the freed TXBBs carry the old pass's owner bit."""
        for i in range(first, first + txbbs):
            old = 1 << 31 if i & self.size else 0
            self._write(i, struct.pack(">I", STAMP | old))

    def cqe(self, index: int) -> bytes:
        off = (index % (1 << self.cq_log)) * 32
        page = self.cq_pages[off // 4096]
        return self.drv.drv.guest.read(page + off % 4096, 32)

    def poll(self, set_ci: bool = True) -> list[bytes]:
        """`mlx4_en_process_tx_cq`: CQEs whose owner bit matches the consumer's pass."""
        found = []
        while True:
            cqe = self.cqe(self.cons)
            if bool(cqe[31] & 0x80) != bool(self.cons & (1 << self.cq_log)):
                break
            found.append(cqe)
            self.cons += 1
        if set_ci:
            self.drv.drv.guest.write(CQ_DB, struct.pack(">I", self.cons & 0xFFFFFF))
        return found

    def arm(self) -> None:
        """`mlx4_en_arm_cq`: MLX4_CQ_DB_REQ_NOT with the consumer index."""
        self.drv.uar_write(0x20, struct.pack(">II", 2 << 24 | TX_CQN, self.cons & 0xFFFFFF))

    def eqes(self) -> list[bytes]:
        """The ISR (INTx: both EQs share the line): what the interrupt brought, if any."""
        return self.drv.async_eqes()


def inline(data: bytes) -> bytes:
    """One inline segment, padded to 16 bytes (`build_inline_wqe`, short frames)."""
    seg = struct.pack(">I", 1 << 31 | len(data)) + data
    return seg + bytes(-len(seg) % 16)


def gather(addr: int, length: int, lkey: int = LKEY) -> bytes:
    return struct.pack(">IIQ", length, lkey, addr)


def capture(dev: Cx3Device) -> list[tuple[int, bytes]]:
    wire: list[tuple[int, bytes]] = []

    def transmit(port: int, data: bytes) -> bool:
        wire.append((port, data))
        return True

    dev.datapath.transmit = transmit
    return wire


def cqe_fields(cqe: bytes) -> tuple[int, int, int]:
    """(qpn, wqe_index, owner_sr_opcode without the owner bit)."""
    qpn, wqe_index = struct.unpack_from(">I", cqe, 0)[0], struct.unpack_from(">H", cqe, 0x18)[0]
    return qpn & 0xFFFFFF, wqe_index, cqe[31] & 0x7F


def test_inline_send_completes_and_raises_the_completion_event(
    tx: tuple[Cx3Device, TxRing],
) -> None:
    dev, ring = tx
    wire = capture(dev)
    arp = frame_bytes(42, dst=frame.BROADCAST, ethertype=0x0806)
    ring.arm()
    assert ring.eqes() == []
    ring.post(inline(arp))
    assert wire == [(1, arp + bytes(18))]  # padded to 60 on the wire
    (cqe,) = ring.poll()
    assert cqe_fields(cqe) == (QPN, 0, 0x40 | SEND)
    (eqe,) = ring.eqes()  # a completion event (type 0) for the CQ, with its interrupt
    assert eqe[1] == 0x00 and struct.unpack_from(">I", eqe, 4)[0] == TX_CQN

    ring.post(inline(arp))  # not armed again: a CQE, no event
    assert len(ring.poll()) == 1 and ring.eqes() == []
    counters = dev.firmware.state.ports[1].counters
    assert counters.total("TTOT") == 2 and counters.total("TOCT") == 2 * 64
    assert counters["TBCAST_novlan"] == 2 and counters["TTOT_prio_0"] == 0  # untagged
    out = ring.drv.drv.cmd_box(Opcode.DUMP_ETH_STATS, in_mod=1, size=stats.SIZE)
    assert struct.unpack_from(">Q", out, stats.OFFSETS["TTOT_novlan"])[0] == 2
    assert struct.unpack_from(">Q", out, stats.OFFSETS["TOCT_novlan"])[0] == 128
    assert not [e for e in dev.events.since(0) if e["kind"] == "error"]


def test_stats_layout_matches_en_port_h() -> None:
    # en_port.h: 13 R groups x 9, 9 RTTLOCT triplets, 9 RTOT triplets, 8 singles; then T side
    assert stats.OFFSETS["ROCT_prio_0"] == 8 * (117 + 2)
    assert stats.OFFSETS["RTOT_prio_0"] == 8 * 144
    assert stats.OFFSETS["TOCT_prio_0"] == 8 * (309 + 2)
    assert stats.OFFSETS["TTOT_prio_0"] == 8 * 339
    assert stats.OFFSETS["RDROP"] == 369 * 8 + 16 and stats.SIZE == 2988


def test_multi_segment_send_with_offloads(tx: tuple[Cx3Device, TxRing]) -> None:
    dev, ring = tx
    wire = capture(dev)
    guest = ring.drv.drv.guest
    # An IPv4/UDP frame split over three gather entries, checksums left to the NIC
    payload = bytes(range(200))
    udp = struct.pack(">HHHH", 5000, 6000, 8 + len(payload), 0x1234) + payload
    ip = struct.pack(
        ">BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(udp),
        1,
        0,
        64,
        17,
        0,
        bytes([10, 99, 0, 1]),
        bytes([10, 99, 0, 2]),
    )
    packet = frame_bytes(14, ethertype=0x0800) + ip + udp
    parts = [packet[:34], packet[34:100], packet[100:]]
    addrs = []
    for part in parts:
        addr = guest.alloc()
        guest.write(addr, part)
        addrs.append(addr)
    segs = b"".join(gather(a, len(p)) for a, p in zip(addrs, parts, strict=True))
    flags = CTRL_FLAGS | 1 << 4 | 1 << 5  # IP_CSUM | TCP_UDP_CSUM
    ring.post(segs + bytes(16), flags=flags, vlan=0x2005)  # + a zero-length (skipped) entry
    ((port, sent),) = wire
    assert port == 1 and len(ring.poll()) == 1
    untagged, tci = frame.strip_cvlan(sent)
    assert tci == 0x2005
    ip_out = untagged[14:34]
    assert frame.checksum(ip_out) == 0  # a valid IPv4 header checksum
    pseudo = ip_out[12:20] + struct.pack(">BBH", 0, 17, len(udp))
    assert frame.checksum(untagged[34:], frame._sum16(pseudo)) == 0  # a valid UDP checksum
    assert untagged[42:] == payload
    counters = dev.firmware.state.ports[1].counters
    assert counters["TTOT_prio_1"] == 1 and counters["T1Q_prio_1"] == 1  # PCP 1 of 0x2005


def test_a_wrapped_ring_and_unsignaled_wqes(tx: tuple[Cx3Device, TxRing]) -> None:
    dev, ring = tx
    wire = capture(dev)
    small = inline(frame_bytes(40))  # 1 TXBB
    for _ in range(62):  # TXBBs 0..61, completed and stamped as the driver does
        ring.post(small)
    assert len(ring.poll()) == 62
    ring.stamp(0, 62)
    # an unsignaled WQE (xmit_more: no doorbell), then a 2-TXBB WQE at TXBB 63 that continues
    # at TXBB 0 (the bounce buffer), then one on pass 1 (owner bit set)
    ring.post(small, flags=0, doorbell=False)
    big = frame_bytes(100)
    wrapped = ring.post(inline(big[:44]) + inline(big[44:]))
    last = ring.post(small)
    assert (wrapped, last) == (63, 65)
    cqes = ring.poll()
    assert [cqe_fields(c)[1] for c in cqes] == [63, 65]  # one CQE covers the unsignaled one
    assert len(wire) == 62 + 3 and wire[-2][1] == big
    assert dev.firmware.state.qps[QPN].sq_next == 66


def test_the_cq_wraps_and_its_owner_bit_flips(en: tuple[Cx3Device, EnDriver]) -> None:
    dev, drv = en
    drv.cmd(Opcode.SW2HW_MPT, drv.box(drv.mpt(MPT_INDEX)), MPT_INDEX)
    ring = TxRing.create(drv, cq_log=2)  # 4 CQEs
    capture(dev)
    for i in range(10):
        ring.post(inline(frame_bytes(40)))
        (cqe,) = ring.poll()  # consumed (and published) each time: never full
        assert cqe_fields(cqe)[1] == i and bool(cqe[31] & 0x80) == bool(i & 4)
        ring.stamp(i, 1)


def test_cq_overrun_raises_cq_error_and_stops_completing(en: tuple[Cx3Device, EnDriver]) -> None:
    dev, drv = en
    drv.cmd(Opcode.SW2HW_MPT, drv.box(drv.mpt(MPT_INDEX)), MPT_INDEX)
    ring = TxRing.create(drv, cq_log=2)
    wire = capture(dev)
    for _ in range(4):
        ring.post(inline(frame_bytes(40)))
    assert drv.async_eqes() == []
    ring.post(inline(frame_bytes(40)))  # the driver never published a consumer index
    (eqe,) = drv.async_eqes()
    assert (eqe[1], struct.unpack_from(">I", eqe, 4)[0], eqe[0x0F]) == (0x04, TX_CQN, 1)
    ring.post(inline(frame_bytes(40)))
    assert drv.async_eqes() == []  # reported once; the CQ stays in error
    assert len(ring.poll()) == 4 and len(wire) == 6  # the frames still went out
    cq = dev.firmware.state.cqs[TX_CQN]
    assert cq.overrun and dev.datapath.counts["cq_overruns"] == 2


def test_arming_with_unpolled_cqes_fires_at_once(tx: tuple[Cx3Device, TxRing]) -> None:
    dev, ring = tx
    capture(dev)
    ring.post(inline(frame_bytes(40)))
    ring.arm()  # consumer 0, producer 1: the event is due now
    assert len(ring.eqes()) == 1
    ring.poll()
    ring.arm()
    assert ring.eqes() == []


def test_an_announced_cqe_left_unpolled_fires_no_second_event(
    tx: tuple[Cx3Device, TxRing],
) -> None:
    """mlx4_en's RX poll leaves CQEs alone while its port is not up and arms again: the
    event is not repeated (else an interrupt storm); a new CQE is announced as usual."""
    dev, ring = tx
    capture(dev)
    ring.arm()
    ring.post(inline(frame_bytes(40)))
    assert len(ring.eqes()) == 1  # armed: the CQE is announced
    for _ in range(3):
        ring.arm()  # consumer still 0, the CQE announced already
        assert ring.eqes() == []
    ring.post(inline(frame_bytes(40)))
    assert len(ring.eqes()) == 1  # a new CQE on the armed CQ


@pytest.mark.parametrize(
    ("segment", "syndrome"),
    [
        (gather(0xDEAD0000000, 64), cqmod.LOCAL_PROT_ERR),  # outside guest memory
        (gather(RAM_BASE, 64, lkey=0x4242), cqmod.LOCAL_PROT_ERR),  # no such memory key
        (struct.pack(">I", 1 << 31 | 200) + bytes(12), cqmod.LOCAL_LENGTH_ERR),  # inline > WQE
    ],
)
def test_a_malformed_wqe_completes_in_error_and_flushes_the_rest(
    tx: tuple[Cx3Device, TxRing], segment: bytes, syndrome: int
) -> None:
    dev, ring = tx
    wire = capture(dev)
    ring.post(segment, flags=0)  # even unsignaled: errors always complete
    ring.post(inline(frame_bytes(40)))
    err, flushed = ring.poll()
    assert cqe_fields(err) == (QPN, 0, 0x40 | cqmod.OPCODE_ERROR) and err[0x1B] == syndrome
    assert cqe_fields(flushed)[1:] == (1, 0x40 | cqmod.OPCODE_ERROR)
    assert flushed[0x1B] == cqmod.WR_FLUSH_ERR
    assert wire == [] and dev.firmware.state.qps[QPN].state == QpState.ERR
    (error,) = [e for e in dev.events.since(0) if e["kind"] == "error"]
    assert "error CQE" in str(error["message"])


def test_a_wrong_opcode_and_a_doorbell_for_a_qp_not_ready(tx: tuple[Cx3Device, TxRing]) -> None:
    dev, ring = tx
    capture(dev)
    ring.post(inline(frame_bytes(40)), opcode=0x08)  # RDMA write: not an Ethernet opcode
    (err,) = ring.poll()
    assert err[0x1B] == cqmod.LOCAL_QP_OP_ERR
    ring.drv.cmd(Opcode.TO_RST_QP, 0, QPN, op_mod=2)
    ring.ring()  # a QP in RST: the doorbell is ignored, and said so
    assert "which is in RST" in str(dev.events.since(0)[-1]["message"])


def tcp_header(seq: int, flags: int) -> bytes:
    return struct.pack(">HHIIBBHHH", 40000, 5201, seq, 7, 5 << 4, flags, 512, 0, 0)


@pytest.mark.parametrize("version", [4, 6])
def test_an_lso_wqe_is_cut_into_mss_sized_tcp_segments(
    tx: tuple[Cx3Device, TxRing], version: int
) -> None:
    dev, ring = tx
    wire = capture(dev)
    guest = ring.drv.drv.guest
    mss, seq = 1448, 0xFFFFF000  # the sequence number wraps within the burst
    payload = bytes(i * 7 % 251 for i in range(5 * mss + 300))  # 5 full segments + 300 bytes
    tcp = tcp_header(seq, 0x18 | 0x80)  # PSH|ACK|CWR, as the stack leaves a TSO skb
    src, dst = bytes([10, 99, 0, 1]), bytes([10, 99, 0, 2])
    if version == 4:
        ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 0, 0x1000, 0x4000, 64, 6, 0, src, dst)
        header = frame_bytes(14, ethertype=0x0800) + ip + tcp
    else:
        src, dst = bytes(15) + b"\x01", bytes(15) + b"\x02"
        ip = struct.pack(">IHBB16s16s", 6 << 28, 0, 6, 64, src, dst)  # payload_len 0: BIG TCP
        header = frame_bytes(14, ethertype=0x86DD) + ip + tcp
    addr = guest.alloc(len(payload) + 4096)
    guest.write(addr, payload)
    lso = struct.pack(">I", mss << 16 | len(header)) + header
    lso += bytes(-len(lso) % 16)
    flags = CTRL_FLAGS | 1 << 4 | 1 << 5
    ring.post(
        lso + gather(addr, 2 * mss) + gather(addr + 2 * mss, len(payload) - 2 * mss),
        flags=flags,
        opcode=LSO,
    )
    (cqe,) = ring.poll()  # one CQE for the WQE
    assert cqe_fields(cqe) == (QPN, 0, 0x40 | LSO)
    assert [port for port, _ in wire] == [1] * 6
    l4 = len(header) - 20
    got = b""
    for i, (_, sent) in enumerate(wire):
        chunk = payload[i * mss : (i + 1) * mss]
        assert len(sent) == len(header) + len(chunk)
        assert sent[l4 + 20 :] == chunk
        got += chunk
        ipb = sent[14:l4]
        if version == 4:
            assert struct.unpack_from(">HH", ipb, 2) == (len(sent) - 14, 0x1000 + i)
            assert frame.checksum(ipb) == 0
            pseudo = src + dst + struct.pack(">BBH", 0, 6, len(sent) - l4)
        else:
            assert struct.unpack_from(">H", ipb, 4)[0] == len(sent) - l4
            pseudo = src + dst + struct.pack(">IxxxB", len(sent) - l4, 6)
        assert frame.checksum(sent[l4:], frame._sum16(pseudo)) == 0
        assert struct.unpack_from(">I", sent, l4 + 4)[0] == (seq + i * mss) & 0xFFFFFFFF
        last, first = i == len(wire) - 1, i == 0
        assert sent[l4 + 13] == 0x10 | (0x08 if last else 0) | (0x80 if first else 0)
    assert got == payload
    counters = dev.firmware.state.ports[1].counters
    assert counters.total("TTOT") == 6
    assert counters.total("TOCT") == len(payload) + 6 * (len(header) + frame.FCS_LEN)
    assert not [e for e in dev.events.since(0) if e["kind"] == "error"]


def test_an_lso_wqe_without_tcp_headers_completes_in_error(tx: tuple[Cx3Device, TxRing]) -> None:
    dev, ring = tx
    wire = capture(dev)
    header = frame_bytes(40)  # not IP
    lso = struct.pack(">I", 1000 << 16 | len(header)) + header
    ring.post(lso + bytes(-len(lso) % 16), opcode=LSO)
    (err,) = ring.poll()
    assert err[0x1B] == cqmod.LOCAL_LENGTH_ERR and wire == []
