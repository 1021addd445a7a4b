"""The firmware commands mlx4_en sends, over the real vfio-user wire (an in-process server).

A fake mlx4_en (`EnDriver`) builds the mailboxes the way `mr.c`, `cq.c`, `qp.c`, `port.c` and
`en_port.c` do. Each test checks the state the model keeps and the refusals a card makes.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cx3.device import Cx3Device
from cx3.hcr import Status
from cx3.opcodes import Opcode
from cx3.qp import QpState
from vfio_user import IRQ_INTX
from vfio_user.client import Client
from vfio_user.device import BAR2_REGION
from vfio_user.server import Server

from .cx3_guest import (
    COMP_EQN,
    CQC_BASE,
    DMPT_BASE,
    LOG_CQS,
    LOG_MC_HASH,
    LOG_MCGS,
    LOG_MGM_ENTRY,
    LOG_MPTS,
    LOG_QPS,
    MCG_BASE,
    QPC_BASE,
    CmdError,
    Driver,
    Guest,
    MemfdRam,
    TransportBus,
)
from .vfio_loop import running_loop, wait_idle

RAM_BASE, RAM_SIZE = 0x1_0000_0000, 16 << 20
UAR = 129  # mlx4_en's own UAR page
TX_CQN, RX_CQN, QPN = 0x80, 0x81, 0x208
PORT_CHANGE, PORT_DOWN, PORT_UP = 0x09, 1, 4


@dataclass
class EnDriver:
    """Just enough of mlx4_en (and the mlx4_core calls it makes) to drive the commands."""

    drv: Driver
    intx: int
    client: Client

    def map_tables(self) -> None:
        """`mlx4_table_get` for the contexts the tests use (ICM pages come on demand)."""
        self.drv.map_icm(DMPT_BASE, 64 << 10)  # MPTs 0..1023
        self.drv.map_icm(CQC_BASE, 64 << 10)  # CQs 0..1023
        self.drv.map_icm(QPC_BASE + (QPN & ~0xFF) * 256, 64 << 10)  # QPs 0x200..0x2ff
        self.drv.map_icm(MCG_BASE, 64 << 10)

    def cmd(self, opcode: int, in_param: int = 0, in_mod: int = 0, op_mod: int = 0) -> int:
        return self.drv.cmd(opcode, in_param=in_param, in_mod=in_mod, op_mod=op_mod)

    def box(self, data: bytes) -> int:
        return self.drv.mailbox(data)

    def status(self, opcode: int, in_param: int = 0, in_mod: int = 0, op_mod: int = 0) -> int:
        try:
            self.cmd(opcode, in_param, in_mod, op_mod)
        except CmdError as e:
            return e.status
        return Status.OK

    # --- mr.c ------------------------------------------------------------------------------

    def mpt(self, index: int, key: int | None = None) -> bytes:
        """`mlx4_mr_enable` of a physical region (flags: MIO | REGION | PHYSICAL | LOCAL_WRITE)."""
        entry = bytearray(0x40)
        struct.pack_into(">III", entry, 0, 1 << 17 | 1 << 8 | 1 << 9 | 1 << 11, 0, index)
        if key is not None:
            struct.pack_into(">I", entry, 8, key)
        struct.pack_into(">IQQ", entry, 0x0C, 1, 0, (1 << 64) - 1)
        return bytes(entry)

    # --- cq.c ------------------------------------------------------------------------------

    def cq_context(self, log_size: int, mtt_index: int, eqn: int = COMP_EQN) -> bytes:
        ctx = bytearray(0x40)
        struct.pack_into(">I", ctx, 0x0C, log_size << 24 | UAR)
        ctx[0x17] = eqn
        struct.pack_into(">I", ctx, 0x1C, 8 * mtt_index)
        struct.pack_into(">Q", ctx, 0x38, RAM_BASE + 0x100)
        return bytes(ctx)

    def create_cq(self, cqn: int, log_size: int = 6, mtt_index: int = 2048) -> list[int]:
        """`mlx4_cq_alloc`: buffer pages, MTT entries written by the CPU, then SW2HW_CQ."""
        pages = [self.drv.guest.alloc() for _ in range(max(1, (32 << log_size) // 4096))]
        for pa in pages:
            self.drv.guest.write(pa, bytes(4096))
        self.drv.write_mtt(mtt_index, pages)
        self.cmd(Opcode.SW2HW_CQ, self.box(self.cq_context(log_size, mtt_index)), cqn)
        return pages

    # --- qp.c / en_resources.c -------------------------------------------------------------

    def qp_inbox(self, state: QpState, cqn: int = TX_CQN, optpar: int = 0) -> int:
        """`mlx4_en_fill_qp_context` behind `__mlx4_qp_modify`'s optpar word."""
        ctx = bytearray(0xF8)
        struct.pack_into(">II", ctx, 0, state << 28 | 7 << 16, 1)
        ctx[0x0A] = 6 << 3 | 2  # 64 send WQEs of 64 bytes
        struct.pack_into(">II", ctx, 0x0C, UAR, QPN)
        ctx[0x38] = 0x83
        struct.pack_into(">I", ctx, 0x7C, cqn)
        struct.pack_into(">IQ", ctx, 0x9C, cqn, RAM_BASE + 0x200)
        return self.box(struct.pack(">I4x", optpar) + bytes(ctx))

    def to_rts(self, qpn: int = QPN) -> None:
        """`mlx4_qp_to_ready`."""
        for op, state in (
            (Opcode.RST2INIT_QP, QpState.INIT),
            (Opcode.INIT2RTR_QP, QpState.RTR),
            (Opcode.RTR2RTS_QP, QpState.RTS),
        ):
            self.cmd(op, self.qp_inbox(state), qpn)

    # --- port.c / en_port.c ------------------------------------------------------------------

    def set_port(self, which: int, data: bytes, port: int = 1) -> int:
        return self.status(Opcode.SET_PORT, self.box(data), which << 8 | port, 1)

    def mac_table(self, entries: dict[int, int]) -> bytes:
        table = [0] * 128
        for i, mac in entries.items():
            table[i] = mac | 1 << 63
        return struct.pack(">128Q", *table)

    def query_port(self, port: int = 1) -> bytes:
        return self.drv.cmd_box(Opcode.QUERY_PORT, in_mod=port)

    def async_eqes(self) -> list[bytes]:
        """The ISR: what the interrupt (if any) brought on the async EQ."""
        fired = _eventfd_count(self.intx)
        eqes = self.drv.interrupt()
        self.client.unmask_intx()  # QEMU's EOI: vfio masks INTx each time it fires
        assert bool(fired) == bool(eqes), (fired, eqes)
        return eqes

    # --- UAR -------------------------------------------------------------------------------

    def uar_write(self, offset: int, data: bytes) -> None:
        self.drv.bus.bar_write(BAR2_REGION, UAR * 4096 + offset, data)


def _eventfd_count(fd: int) -> int:
    try:
        return os.eventfd_read(fd)
    except BlockingIOError:
        return 0


@pytest.fixture
def en(tmp_path: Path) -> Iterator[tuple[Cx3Device, EnDriver]]:
    dev = Cx3Device()
    server = Server(dev, tmp_path / "cx3.sock", log=lambda msg: None)
    ram = MemfdRam(RAM_BASE, RAM_SIZE)
    with running_loop(server.register, server), Client(tmp_path / "cx3.sock") as client:
        client.version()
        client.dma_map(RAM_BASE, RAM_SIZE, os.dup(ram.fd))
        intx = os.eventfd(0, os.EFD_NONBLOCK)
        client.set_irq_eventfds(IRQ_INTX, 0, [os.dup(intx)])
        drv = Driver(
            TransportBus(client, lambda: wait_idle(server)), Guest(ram, RAM_BASE, RAM_SIZE)
        )
        drv.config_write16(0x04, 0x0006)
        drv.probe(comp_log_nent=6)
        en = EnDriver(drv, intx, client)
        en.map_tables()
        yield dev, en
        os.close(intx)
    server.close()


def test_sw2hw_mpt_keeps_the_region_and_refuses_what_a_card_refuses(
    en: tuple[Cx3Device, EnDriver],
) -> None:
    dev, drv = en
    assert drv.status(Opcode.SW2HW_MPT, drv.box(drv.mpt(1)), 1) == Status.OK
    (mpt,) = dev.firmware.state.mpts.values()
    assert (mpt.index, mpt.pd, mpt.physical, mpt.length) == (1, 1, True, (1 << 64) - 1)
    assert drv.status(Opcode.SW2HW_MPT, drv.box(drv.mpt(1)), 1) == Status.BAD_RES_STATE
    assert drv.status(Opcode.SW2HW_MPT, drv.box(drv.mpt(2, key=3)), 2) == Status.BAD_PARAM
    assert drv.status(Opcode.SW2HW_MPT, drv.box(drv.mpt(0)), 1 << LOG_MPTS) == Status.BAD_INDEX
    assert drv.status(Opcode.SW2HW_MPT, drv.box(drv.mpt(5000)), 5000) == Status.ICM_ERROR
    drv.cmd(Opcode.HW2SW_MPT, in_mod=1, op_mod=1)
    drv.cmd(Opcode.HW2SW_MPT, in_mod=1, op_mod=1)  # closing: a second time is no failure
    assert dev.firmware.state.mpts == {}


def test_cq_is_handed_over_hardware_owned_and_kept(en: tuple[Cx3Device, EnDriver]) -> None:
    dev, drv = en
    pages = drv.create_cq(TX_CQN, log_size=7)  # 128 CQEs of 32 bytes: one page
    cq = dev.firmware.state.cqs[TX_CQN]
    assert (cq.nent, cq.ctx.comp_eqn, cq.ctx.uar, cq.pages) == (128, COMP_EQN, UAR, pages)
    assert cq.ctx.db_rec_addr == RAM_BASE + 0x100 and cq.ctx.mtt_offset == 8 * 2048
    ring = drv.drv.guest.read(pages[0], 4096)
    assert all(ring[32 * i + 31] & 0x80 for i in range(128))  # every CQE hardware-owned

    drv.cmd(Opcode.MODIFY_CQ, drv.box(struct.pack(">16xHH", 16, 44)), TX_CQN, op_mod=1)
    assert (cq.ctx.period, cq.ctx.max_count) == (16, 44)

    again = drv.box(drv.cq_context(6, 2048))
    assert drv.status(Opcode.SW2HW_CQ, again, TX_CQN) == Status.BAD_RES_STATE
    assert drv.status(Opcode.SW2HW_CQ, again, 1 << LOG_CQS) == Status.BAD_INDEX
    no_eq = drv.box(drv.cq_context(6, 2048, eqn=9))
    assert drv.status(Opcode.SW2HW_CQ, no_eq, RX_CQN) == Status.BAD_PARAM
    assert drv.status(Opcode.MODIFY_CQ, again, RX_CQN, 1) == Status.BAD_RES_STATE
    assert drv.status(Opcode.MODIFY_CQ, again, TX_CQN, 7) == Status.BAD_PARAM
    drv.cmd(Opcode.HW2SW_CQ, in_mod=TX_CQN, op_mod=1)
    drv.cmd(Opcode.HW2SW_CQ, in_mod=TX_CQN, op_mod=1)
    assert dev.firmware.state.cqs == {}


def test_sw_cq_init_leaves_the_ring_to_the_driver(en: tuple[Cx3Device, EnDriver]) -> None:
    _, drv = en
    page = drv.drv.guest.alloc()
    drv.drv.guest.write(page, bytes(4096))
    drv.drv.write_mtt(3000, [page])
    drv.cmd(Opcode.SW2HW_CQ, drv.box(drv.cq_context(6, 3000)), RX_CQN, op_mod=1)
    assert drv.drv.guest.read(page, 4096) == bytes(4096)


def test_qp_state_machine(en: tuple[Cx3Device, EnDriver]) -> None:
    dev, drv = en
    drv.create_cq(TX_CQN)
    init2rtr = drv.qp_inbox(QpState.RTR)
    assert drv.status(Opcode.INIT2RTR_QP, init2rtr, QPN) == Status.BAD_QP_STATE  # still RST
    assert QPN not in dev.firmware.state.qps
    drv.to_rts()
    qp = dev.firmware.state.qps[QPN]
    assert qp.state == QpState.RTS
    assert (qp.ctx.cqn_send, qp.ctx.cqn_recv, qp.ctx.uar) == (TX_CQN, TX_CQN, UAR)
    assert (qp.ctx.sched_queue, qp.ctx.queue_log_size(qp.ctx.sq_size_stride)) == (0x83, 6)
    assert qp.ctx.db_rec_addr == RAM_BASE + 0x200
    for op in (Opcode.RST2INIT_QP, Opcode.INIT2RTR_QP, Opcode.RTR2RTS_QP):
        assert drv.status(op, init2rtr, QPN) == Status.BAD_QP_STATE
    assert qp.state == QpState.RTS  # a refused transition leaves it where it was

    out = drv.drv.cmd_box(Opcode.QUERY_QP, in_mod=QPN, size=8 + 0xF8)
    assert out[8] >> 4 == QpState.RTS and out[8 + 0x7C : 8 + 0x80] == TX_CQN.to_bytes(4, "big")
    drv.cmd(Opcode.RTS2RTS_QP, init2rtr, QPN)
    drv.cmd(Opcode.TO_ERR_QP, init2rtr, QPN)
    assert dev.firmware.state.qps[QPN].state == QpState.ERR
    drv.cmd(Opcode.TO_RST_QP, 0, QPN, op_mod=2)
    drv.cmd(Opcode.TO_RST_QP, 0, QPN, op_mod=2)  # closing: RST again is no failure
    assert dev.firmware.state.qps == {}

    no_cq = drv.qp_inbox(QpState.INIT, cqn=0x90)
    assert drv.status(Opcode.RST2INIT_QP, no_cq, QPN) == Status.BAD_PARAM
    assert drv.status(Opcode.RST2INIT_QP, no_cq, 1 << LOG_QPS) == Status.BAD_INDEX
    assert drv.status(Opcode.RST2INIT_QP, drv.qp_inbox(QpState.INIT), 0x300) == Status.ICM_ERROR


def test_port_tables_and_filters(en: tuple[Cx3Device, EnDriver]) -> None:
    dev, drv = en
    port = dev.firmware.state.ports[1]
    general = struct.pack(">3xB2xHBB2xBB", 7, 1526, 0x80, 0, 0x80, 0)
    assert drv.set_port(0, general) == Status.OK and port.mtu == 1526
    assert drv.set_port(0, struct.pack(">3xB2xH", 1, 9000)) == Status.BAD_PARAM
    rqp = struct.pack(">IxB14xII", 0x200, 7, 1 << 31 | 0x200, 2 << 30 | 0x200)
    assert drv.set_port(1, rqp) == Status.OK
    assert (port.base_qpn, port.promisc, port.mc_promisc) == (0x200, True, 2)
    assert drv.set_port(2, drv.mac_table({0: 0x0002C9000001, 5: 0x0002C9AABBCC})) == Status.OK
    assert port.macs == {0: 0x0002C9000001, 5: 0x0002C9AABBCC}
    assert drv.set_port(2, drv.mac_table({0: 1, 1: 1})) == Status.BAD_PARAM  # a MAC twice
    vlans = [0] * 128
    vlans[2] = 1 << 31 | 10
    assert drv.set_port(3, struct.pack(">128I", *vlans)) == Status.OK and port.vlans == {2: 10}
    assert drv.set_port(0xB, bytes(32)) == Status.BAD_PARAM  # VXLAN: not offered
    assert drv.set_port(0, general, port=3) == Status.BAD_PARAM
    assert drv.status(Opcode.SET_PORT, drv.box(general), 1, op_mod=0) == Status.BAD_PARAM

    words = [0] * 128
    words[127] = 1 << 0 | 1 << 10  # VIDs 0 and 10
    words[127 - 3] = 1 << 4  # VID 100
    drv.cmd(Opcode.SET_VLAN_FLTR, drv.box(struct.pack(">128I", *words)), 1)
    assert port.vlan_filter == {0, 10, 100}
    drv.cmd(Opcode.SET_MCAST_FLTR, 0, 1, op_mod=1)
    drv.cmd(Opcode.SET_MCAST_FLTR, 1 << 63 | 0xFFFFFFFFFFFF, 1, op_mod=0)
    drv.cmd(Opcode.SET_MCAST_FLTR, 0x01005E010203, 1, op_mod=0)
    drv.cmd(Opcode.SET_MCAST_FLTR, 0, 1, op_mod=2)
    assert port.mcast_filter_on and port.mcast_filter == {0xFFFFFFFFFFFF, 0x01005E010203}
    assert drv.status(Opcode.SET_MCAST_FLTR, 0, 1, op_mod=3) == Status.BAD_PARAM

    stats = drv.drv.cmd_box(Opcode.DUMP_ETH_STATS, in_mod=1 << 8 | 1, size=2988)
    assert stats == bytes(2988) and port.stats_reads == 1
    hca = drv.drv.cmd_box(Opcode.QUERY_HCA, size=0x200)
    assert hca[0x100:0x108] == (0x110000000).to_bytes(8, "big")  # INIT_HCA's, read back


def test_mac_table_overflow(en: tuple[Cx3Device, EnDriver]) -> None:
    dev, drv = en
    port = dev.firmware.state.ports[1]
    port.log_max_macs = 2  # firmware whose port holds 4 MACs: QUERY_PORT says so
    assert drv.query_port()[0x0A] & 0xF == 2
    full = {i: 0x0002C9000010 + i for i in range(4)}
    assert drv.set_port(2, drv.mac_table(full)) == Status.OK
    assert drv.set_port(2, drv.mac_table({**full, 4: 0x0002C9000020})) == Status.EXCEED_LIM
    assert port.macs == full  # the refused table changed nothing


def test_link_follows_init_port_and_the_cable(en: tuple[Cx3Device, EnDriver]) -> None:
    dev, drv = en
    out = drv.query_port()
    assert out[0] == 0x02 and out[5] == 0x40  # Ethernet, link down until INIT_PORT; 40G
    assert out[0x10:0x18] == (0x0002C9000001).to_bytes(8, "big")
    assert drv.async_eqes() == []

    drv.cmd(Opcode.INIT_PORT, in_mod=1)
    (eqe,) = drv.async_eqes()
    assert (eqe[1], eqe[3], eqe[0x0C] >> 4) == (PORT_CHANGE, PORT_UP, 1)
    assert drv.query_port()[0] & 0x80
    drv.cmd(Opcode.INIT_PORT, in_mod=1)  # mlx4_en opens it at load and again at ifup
    assert drv.async_eqes() == []

    dev.set_link(False)
    (eqe,) = drv.async_eqes()
    assert (eqe[1], eqe[3]) == (PORT_CHANGE, PORT_DOWN)
    assert not drv.query_port()[0] & 0x80
    dev.set_link(True)
    (eqe,) = drv.async_eqes()
    assert eqe[3] == PORT_UP

    drv.cmd(Opcode.CLOSE_PORT, in_mod=1)
    (eqe,) = drv.async_eqes()
    assert eqe[3] == PORT_DOWN
    dev.set_link(False)  # a closed port has no link to lose: no event
    dev.set_link(True)
    assert drv.async_eqes() == []
    assert drv.status(Opcode.INIT_PORT, in_mod=3) == Status.BAD_PARAM


def test_uar_doorbells_are_logged(en: tuple[Cx3Device, EnDriver]) -> None:
    dev, drv = en
    drv.create_cq(TX_CQN)
    drv.uar_write(0x14, (QPN << 8).to_bytes(4, "big"))
    drv.uar_write(0x20, struct.pack(">II", 1 << 28 | 2 << 24 | TX_CQN, 5))  # one 64-bit write
    cq = dev.firmware.state.cqs[TX_CQN]
    assert (cq.arm, cq.arm_sn, cq.consumer) == (2, 1, 5)
    drv.uar_write(0x20, (2 << 28 | 1 << 24 | TX_CQN).to_bytes(4, "big"))  # split in two
    drv.uar_write(0x24, (7).to_bytes(4, "big"))
    assert (cq.arm, cq.arm_sn, cq.consumer) == (1, 2, 7)
    events = dev.events.since(0)
    sends = [e for e in events if e["kind"] == "send_doorbell"]
    arms = [e for e in events if e["kind"] == "cq_doorbell"]
    assert [(e["uar"], e["qpn"]) for e in sends] == [(UAR, QPN)]
    assert [(e["cqn"], e["consumer"], e["writes"]) for e in arms] == [
        (TX_CQN, 5, 1),
        (TX_CQN, 7, 2),
    ]
    (error,) = [e for e in events if e["kind"] == "error"]
    assert "QP 0x208, which is in RST" in str(error["message"])  # no QP: nothing to send
    drv.uar_write(0x20, struct.pack(">II", 2 << 24 | 0x99, 0))
    assert dev.events.since(0)[-1]["kind"] == "error"  # no such CQ


def test_multicast_groups(en: tuple[Cx3Device, EnDriver]) -> None:
    _, drv = en
    gid = bytes(10) + bytes.fromhex("01005e010203")
    hash1 = drv.cmd(Opcode.MGID_HASH, drv.box(gid))
    assert hash1 == drv.cmd(Opcode.MGID_HASH, drv.box(gid)) and hash1 < 1 << LOG_MC_HASH
    size = 1 << LOG_MGM_ENTRY
    assert drv.drv.cmd_box(Opcode.READ_MCG, in_mod=hash1, size=size) == bytes(size)
    entry = struct.pack(">II8x16sI", 0, 1, gid, QPN)
    drv.cmd(Opcode.WRITE_MCG, drv.box(entry), hash1)
    assert drv.drv.cmd_box(Opcode.READ_MCG, in_mod=hash1, size=48) == entry + bytes(12)
    assert drv.status(Opcode.READ_MCG, in_mod=1 << LOG_MCGS) == Status.BAD_INDEX
    crowded = struct.pack(">II", 0, 1000)
    assert drv.status(Opcode.WRITE_MCG, drv.box(crowded), hash1) == Status.BAD_PARAM


def test_reset_drops_everything_but_the_cable(en: tuple[Cx3Device, EnDriver]) -> None:
    dev, drv = en
    drv.cmd(Opcode.SW2HW_MPT, drv.box(drv.mpt(1)), 1)
    drv.create_cq(TX_CQN)
    drv.to_rts()
    drv.set_port(2, drv.mac_table({0: 0x0002C9000001}))
    drv.cmd(Opcode.INIT_PORT, in_mod=1)
    dev.set_link(False)
    drv.drv.reset()
    state = dev.firmware.state
    assert (state.mpts, state.cqs, state.qps, state.hca) == ({}, {}, {}, None)
    assert not state.ports[1].open and state.ports[1].macs == {}
    assert not dev.firmware.cable.plugged  # the cable is not firmware state
    assert drv.status(Opcode.SW2HW_CQ, drv.box(bytes(64)), TX_CQN) == Status.BAD_SYS_STATE
    assert drv.status(Opcode.SET_PORT, drv.box(bytes(64)), 1, 1) == Status.BAD_SYS_STATE
