"""The model driven through a probe like mlx4_core's: commands, EQs, interrupts, reset."""

from __future__ import annotations

import mmap
import struct

import pytest

from cx3 import layout
from cx3.hcr import Status
from cx3.opcodes import Opcode

from .cx3_guest import ASYNC_EQN, COMP_EQN, HCR, MTT_BASE, CmdError, Driver, make_device


def test_query_fw_outbox_advertises_registers() -> None:
    _, _, drv = make_device()
    drv.reset()
    out = drv.cmd_box(Opcode.QUERY_FW)
    major, subminor, minor = struct.unpack_from(">HHH", out, 0x02)
    assert (major, minor, subminor) == (2, 42, 5000)
    assert struct.unpack_from(">H", out, 0x0A)[0] == 3  # cmd_if_rev in 2..3
    assert struct.unpack_from(">Q", out, 0x20)[0] == 0x80700  # clr_int
    assert out[0x28] >> 6 == 0  # clr_int in BAR0
    assert struct.unpack_from(">QI", out, 0x30) == (0x1F000, 0x10)  # catas buffer
    assert out[0x3C] >> 6 == 0


def test_query_dev_cap_and_port() -> None:
    _, _, drv = make_device()
    drv.reset()
    cap = drv.cmd_box(Opcode.QUERY_DEV_CAP)
    assert struct.unpack_from(">I", cap, 0xE4)[0] == 0x1F100  # health buffer, non-zero
    assert cap[0x37] & 0xF == 2  # two ports, cabled to each other
    assert 1 << (cap[0x22] & 0xF) > 1  # MPT 1 (lkey 0x100, the invalid key) is reserved
    assert struct.unpack_from(">H", cap, 0x90)[0] == 8  # MTT entry size
    assert (1 << (cap[0x1F] & 0xF)) - (1 << (cap[0x1E] & 0xF)) >= 2  # EQs for async + comp
    assert struct.unpack_from(">Q", cap, 0xA0)[0] >= 0x200000000
    port = drv.cmd_box(Opcode.QUERY_PORT, in_mod=1)
    assert port[0] == 0x02 and port[0x0A] == 0x77
    port2 = drv.cmd_box(Opcode.QUERY_PORT, in_mod=2)
    assert port2[0] == 0x02 and port2[0x10:0x18] == (0x0002C9000002).to_bytes(8, "big")
    with pytest.raises(CmdError) as err:
        drv.cmd_box(Opcode.QUERY_PORT, in_mod=3)
    assert err.value.status == Status.BAD_PARAM


def test_health_buffer_can_be_withheld_and_the_knob_survives_reset() -> None:
    dev, _, drv = make_device()
    dev.faults.advertise_health(False)
    drv.reset()  # a knob, like the command faults: the next probe must see it
    cap = drv.cmd_box(Opcode.QUERY_DEV_CAP)
    assert struct.unpack_from(">I", cap, 0xE4)[0] == 0  # the driver then skips crdump
    dev.faults.advertise_health(True)
    cap = drv.cmd_box(Opcode.QUERY_DEV_CAP)
    assert struct.unpack_from(">I", cap, 0xE4)[0] == layout.HEALTH_OFFSET


def test_probe_and_nop_interrupt_over_intx() -> None:
    dev, ctx, drv = make_device()
    drv.probe()
    state = dev.state()
    assert state["fw_running"] and state["hca_initialized"]
    assert state["mtt_base"] == MTT_BASE
    assert sorted(dev.firmware.state.eqs) == [ASYNC_EQN, COMP_EQN]
    assert state["event_map"] == {str(t): ASYNC_EQN for t in range(64) if 0x1D1F46FE >> t & 1}

    # Every slot of both rings starts hardware-owned: the driver sees nothing yet.
    for queue in drv.eqs.values():
        assert queue.next_eqe_sw(drv.guest) is None
    assert not ctx.intx

    eqe = drv.event_cmd(Opcode.NOP, in_mod=0x1F)
    assert eqe[0x0F] == 0 and eqe[0x1F] & 0x80 == 0  # status OK, owner = pass 0
    assert struct.unpack_from(">Q", eqe, 0x10)[0] == 0
    assert not drv.pending()  # GO cleared before the EQE
    assert ctx.intx

    assert len(drv.interrupt()) == 1
    assert not ctx.intx  # clr_int lowered the line
    assert drv.eqs[ASYNC_EQN].next_eqe_sw(drv.guest) is None

    # The ISR re-armed the async EQ, so the next completion interrupts again.
    drv.event_cmd(Opcode.CONF_SPECIAL_QP, in_mod=512)
    assert ctx.intx
    drv.interrupt()
    assert ctx.intx_edges == [True, False, True, False]


def test_unarmed_eq_does_not_interrupt_until_rearmed() -> None:
    dev, ctx, drv = make_device()
    drv.probe()
    drv.event_cmd(Opcode.NOP)
    drv.write32(0x80704, 1)
    assert not ctx.intx
    drv.post(Opcode.NOP, event=True)  # EQ is disarmed: the EQE lands, no interrupt
    assert not ctx.intx
    drv.doorbell(ASYNC_EQN, 0, arm=True)  # two unconsumed entries: fire at once
    assert ctx.intx
    assert len(drv.interrupt()) == 2
    assert dev.state()["intx_asserted"] is False


def test_event_mode_returns_immediate_out_param_in_eqe() -> None:
    _, _, drv = make_device()
    drv.probe()
    eqe = drv.event_cmd(Opcode.SET_ICM_SIZE, in_param=1 << 30)
    assert eqe[0x0F] == 0 and struct.unpack_from(">Q", eqe, 0x10)[0] == 0


def test_owner_bit_flips_on_wrap() -> None:
    _, _, drv = make_device()
    drv.probe()
    queue = drv.eqs[ASYNC_EQN]
    for i in range(queue.nent + 3):
        eqe = drv.event_cmd(Opcode.NOP)
        assert bool(eqe[31] & 0x80) == (i >= queue.nent)
        queue.cons_index += 1
        drv.doorbell(ASYNC_EQN, queue.cons_index, arm=True)


def test_msix_delivers_the_eq_vector() -> None:
    dev, ctx, drv = make_device(msix=True)
    drv.probe(msix=True)
    drv.event_cmd(Opcode.NOP)
    assert ctx.msix_signals == [0] and ctx.intx_edges == []
    drv.eqs[ASYNC_EQN].cons_index = 1  # mlx4_msi_x_interrupt: no clr_int, consume, re-arm
    drv.doorbell(ASYNC_EQN, 1, arm=True)
    drv.event_cmd(Opcode.NOP)
    assert ctx.msix_signals == [0, 0]
    assert dev.events.since(0)[-1]["kind"] == "irq"


def test_catas_injection_and_reset() -> None:
    dev, ctx, drv = make_device()
    drv.probe()
    drv.event_cmd(Opcode.NOP)
    assert ctx.intx
    dev.faults.catas((0x0FFFFFFF, 0x12345678))
    assert drv.read32(0x1F000) == 0x0FFFFFFF and drv.read32(0x1F004) == 0x12345678
    health = bytes(range(64))
    dev.faults.set_health(health)

    drv.reset()
    assert drv.read32(0x1F000) == 0 and drv.read32(0x1F004) == 0  # catas cleared
    assert dev.cr.read(0x1F100, 64) == health  # the health buffer is the FW's, it stays
    assert not ctx.intx
    assert drv.read32(HCR + 0x18) == 0  # T=GO=0, status 0
    state = dev.state()
    assert not state["fw_running"] and not state["hca_initialized"]
    assert state["eqs"] == [] and state["event_map"] == {} and state["icm_pages"] == 0
    assert drv.read32(0x8069C) == 0 and drv.read32(0xF03FC) == 0

    # The device answers the second probe exactly like the first.
    again = Driver(drv.bus, drv.guest)
    again.probe()
    again.event_cmd(Opcode.NOP)


def test_reset_forgets_dma_targets() -> None:
    dev, ctx, drv = make_device()
    drv.probe()
    drv.reset()
    before = bytes(ctx.windows[drv.guest.base])
    drv.doorbell(ASYNC_EQN, 0, arm=True)  # a stale doorbell after the reset
    assert bytes(ctx.windows[drv.guest.base]) == before
    assert dev.events.since(0)[-1]["kind"] == "error"


def test_vfio_reset_hook_is_a_full_reset() -> None:
    dev, _, drv = make_device()
    drv.probe()
    dev.reset()
    assert dev.state()["eqs"] == [] and not dev.hcr.busy
    last = dev.events.since(0)[-1]
    assert (last["kind"], last["source"]) == ("reset", "vfio-user")


def test_crdump_captures_bar0_as_the_guest_reads_it() -> None:
    dev, _, drv = make_device()
    drv.probe()
    dev.faults.catas()
    dev.faults.set_health(b"\xab" * 64)
    dev.faults.load_crspace(bytes([0x5A]) * layout.SIZE)
    guest_view = mmap.mmap(dev.cr.fd, layout.SIZE, prot=mmap.PROT_READ)  # the client's mapping

    filter_on = drv.read32(0xF3F04)
    drv.write32(0xF3F04, filter_on & ~(1 << 6))  # crdump_enable_crspace_access
    drv.write32(0x1F140, 1)
    read = bytearray(guest_view[:])  # mapped pages, then every trapped dword as the driver does
    for page in layout.TRAPPED_PAGES:
        for off in range(page, page + 4096, 4):
            read[off : off + 4] = drv.read32(off).to_bytes(4, "big")
    health = b"".join(drv.read32(0x1F100 + o).to_bytes(4, "big") for o in range(0, 64, 4))
    drv.write32(0x1F140, 0)
    drv.write32(0xF3F04, filter_on)

    records = list(dev.crdumps)
    assert len(records) == 1
    assert records[0].image == bytes(read)
    assert records[0].health == health == b"\xab" * 64
    image = records[0].image
    assert image[0x1F000:0x1F004] == b"\x0f\xff\xff\xff"
    assert image[0x1F140:0x1F144] == b"\0\0\0\1"
    assert image[0xF3F04:0xF3F08] == b"\x5a\x5a\x5a\x1a"  # bit 6 cleared by the driver
    assert image[0x8069C:0x806A0] == image[0xF03FC:0xF0400] == b"\0\0\0\0"
    assert image[0x1F044:0x1F048] == b"\x5a" * 4  # unowned words come from the image
    assert drv.read32(0x1F140) == 0 and drv.read32(0xF3F04) == 0x5A5A5A5A
    assert [e["crdump"] for e in dev.events.since(0) if e["kind"] == "crdump"] == [0]
    guest_view.close()


def test_unknown_opcode_is_bad_op_and_logged() -> None:
    dev, ctx, drv = make_device()
    drv.reset()
    with pytest.raises(CmdError) as err:
        drv.cmd(0x123)
    assert err.value.status == Status.BAD_OP
    assert any("0x123" in line for line in ctx.logs)
    cmd = dev.events.since(0)[-1]
    assert cmd["kind"] == "cmd" and cmd["status"] == Status.BAD_OP
    drv.cmd(Opcode.NOP)  # the HCR is usable afterwards


@pytest.mark.parametrize(
    "opcode,in_param,in_mod",
    [
        (Opcode.HW2SW_EQ, 0, 77),  # no such EQ
        (Opcode.CLOSE_HCA, 0, 0),  # never initialised
        (Opcode.UNMAP_ICM, 0xDEAD000, 64),  # never mapped
        (Opcode.UNMAP_ICM, 0, 0xFFFFFFFF),  # absurd page count
        (Opcode.UNMAP_ICM_AUX, 0, 0),
        (Opcode.UNMAP_FA, 0, 0),
        (Opcode.HW2SW_CQ, 0, 3),
        (Opcode.TO_RST_QP, 0, 3),
        (Opcode.HW2SW_SRQ, 0, 3),
        (Opcode.SYNC_TPT, 0, 0),
        (Opcode.HW2SW_MPT, 0, 3),
    ],
)
def test_closing_commands_never_fail(opcode: int, in_param: int, in_mod: int) -> None:
    _, _, drv = make_device(bus_master=False)  # not even DMA is allowed
    drv.reset()
    drv.cmd(opcode, in_param=in_param, in_mod=in_mod, op_mod=1)


def test_teardown_sequence() -> None:
    dev, _, drv = make_device()
    drv.probe()
    drv.cmd(Opcode.MAP_EQ, in_param=0x1D1F46FE, in_mod=1 << 31 | ASYNC_EQN)
    assert dev.state()["event_map"] == {}
    drv.cmd(Opcode.HW2SW_EQ, in_mod=ASYNC_EQN, op_mod=1)
    drv.cmd(Opcode.HW2SW_EQ, in_mod=COMP_EQN, op_mod=1)
    drv.cmd(Opcode.CLOSE_HCA)
    for va in (MTT_BASE, 0x111800000, 0x0):
        drv.cmd(Opcode.UNMAP_ICM, in_param=va, in_mod=64)
    drv.cmd(Opcode.UNMAP_ICM_AUX)
    drv.cmd(Opcode.UNMAP_FA)
    drv.write32(0x8069C, 0)  # mlx4_free_ownership
    state = dev.state()
    assert state["eqs"] == [] and state["icm_pages"] == 0 and not state["fw_running"]
    assert drv.read32(0x8069C) == 0


def test_cmd_timeout_fault_leaves_go_set_until_reset() -> None:
    dev, ctx, drv = make_device()
    drv.probe()
    dev.faults.cmd_timeout(Opcode.CONF_SPECIAL_QP)
    drv.event_cmd(Opcode.NOP)  # other opcodes are unaffected
    drv.interrupt()
    drv.post(Opcode.CONF_SPECIAL_QP, in_mod=512, event=True)
    assert drv.read32(HCR + 0x18) & 1 << 23  # GO stays set
    assert drv.eqs[ASYNC_EQN].next_eqe_sw(drv.guest) is None and not ctx.intx
    assert dev.state()["faults"] == {"cmd_timeout": None, "closing_cmd": None}  # spent
    drv.write32(HCR + 0x18, 1 << 23 | Opcode.NOP)  # a post while busy is ignored
    assert drv.read32(HCR + 0x18) & 0xFFF == Opcode.CONF_SPECIAL_QP
    drv.reset()
    assert not drv.pending()
    drv.cmd_box(Opcode.QUERY_FW)


def test_armed_timeout_survives_reset_and_hits_next_probe() -> None:
    dev, _, drv = make_device()
    dev.faults.cmd_timeout(Opcode.QUERY_FW)
    drv.reset()
    drv.post(Opcode.QUERY_FW, out_param=drv.guest.alloc())
    assert drv.pending()


def test_closing_cmd_fault_fails_once() -> None:
    dev, _, drv = make_device()
    drv.probe()
    dev.faults.closing_cmd(Opcode.HW2SW_EQ, status=Status.INTERNAL_ERR)
    drv.cmd(Opcode.CLOSE_PORT, in_mod=1)  # not the targeted command
    with pytest.raises(CmdError) as err:
        drv.cmd(Opcode.HW2SW_EQ, in_mod=ASYNC_EQN, op_mod=1)
    assert err.value.status == Status.INTERNAL_ERR
    drv.cmd(Opcode.HW2SW_EQ, in_mod=ASYNC_EQN, op_mod=1)  # spent


def test_closing_cmd_fault_rejects_non_closing_opcode() -> None:
    dev, _, _ = make_device()
    with pytest.raises(ValueError, match="not a closing command"):
        dev.faults.closing_cmd(Opcode.NOP)
    with pytest.raises(ValueError, match=r"1\.\.255"):
        dev.faults.closing_cmd(None, status=0)


def test_bad_dma_address_is_bad_param() -> None:
    dev, _, drv = make_device()
    drv.reset()
    with pytest.raises(CmdError) as err:
        drv.cmd(Opcode.QUERY_FW, out_param=0xDEAD0000)  # outside guest RAM
    assert err.value.status == Status.BAD_PARAM
    assert "0xdead0000" in str(dev.events.since(0)[-1]["error"])
    drv.cmd_box(Opcode.QUERY_FW)


def test_dma_refused_without_bus_master() -> None:
    _, ctx, drv = make_device(bus_master=False)
    drv.reset()
    outbox = drv.guest.alloc()
    with pytest.raises(CmdError) as err:
        drv.cmd(Opcode.QUERY_FW, out_param=outbox)
    assert err.value.status == Status.BAD_PARAM
    assert drv.guest.read(outbox, 16) == bytes(16)
    assert any("Bus Master" in line for line in ctx.logs)


def test_sw2hw_eq_with_unmapped_mtt_fails_cleanly() -> None:
    dev, _, drv = make_device()
    drv.probe()
    ctx = bytearray(64)
    ctx[0x0C] = 9
    struct.pack_into(">I", ctx, 0x1C, 0x100000)  # beyond the mapped MTT chunk
    with pytest.raises(CmdError) as err:
        drv.cmd(Opcode.SW2HW_EQ, in_param=drv.mailbox(bytes(ctx)), in_mod=6)
    assert err.value.status == Status.ICM_ERROR
    assert 6 not in dev.firmware.state.eqs


def test_sw2hw_eq_needs_present_mtt_entries() -> None:
    dev, _, drv = make_device()
    drv.probe()
    ctx = bytearray(64)
    ctx[0x0C] = 7  # 4 KiB of EQEs, MTT index 100 is still zero
    struct.pack_into(">I", ctx, 0x1C, 100 * 8)
    with pytest.raises(CmdError) as err:
        drv.cmd(Opcode.SW2HW_EQ, in_param=drv.mailbox(bytes(ctx)), in_mod=7)
    assert err.value.status == Status.ICM_ERROR
    assert "not present" in str(dev.events.since(0)[-1]["error"])


def test_sw2hw_eq_twice_and_before_init_hca() -> None:
    _, _, drv = make_device()
    drv.reset()
    with pytest.raises(CmdError) as err:
        drv.cmd(Opcode.SW2HW_EQ, in_param=drv.mailbox(bytes(64)), in_mod=4)
    assert err.value.status == Status.BAD_SYS_STATE
    drv.probe()
    with pytest.raises(CmdError) as err:
        drv.create_eq(ASYNC_EQN, 9, mtt_index=8)
    assert err.value.status == Status.BAD_RES_STATE


def test_event_without_mapped_eq_is_logged_not_fatal() -> None:
    dev, _, drv = make_device()
    drv.reset()
    drv.post(Opcode.NOP, event=True)
    assert not drv.pending()
    assert dev.events.since(0)[-1]["kind"] == "error"


def test_register_writes_of_the_wrong_width_are_ignored() -> None:
    dev, _, drv = make_device()
    drv.reset()
    bar0 = dev.regions[0]
    assert bar0.write is not None
    bar0.write(HCR + 0x1A, b"\x80\x00")  # half of the go word
    assert drv.read32(HCR + 0x18) == 0
    bar0.write(0x1F000, b"\1\2\3\4")  # catas buffer is the firmware's
    assert drv.read32(0x1F000) == 0
    bar0.write(0x1F03E, b"\xaa\xbb\xcc\xdd")  # straddles the end of the catas buffer
    assert dev.counts["errors"] == 2
    assert drv.read32(0x1F03C) == 0 and dev.cr.read(0x1F040, 2) == b"\xcc\xdd"
    bar0.write(0x20000, b"\x11\x22\x33")  # plain CR-space is memory
    assert dev.cr.read(0x20000, 3) == b"\x11\x22\x33"


def test_completion_eqe_is_written_after_go_clears() -> None:
    dev, ctx, drv = make_device()
    drv.probe()
    ring = set(drv.eqs[ASYNC_EQN].pages)
    busy_at_write: list[bool] = []
    plain_write = ctx.dma_write

    def spying_write(addr: int, data: bytes) -> None:
        if addr & ~0xFFF in ring:
            busy_at_write.append(dev.hcr.busy)
        plain_write(addr, data)

    ctx.dma_write = spying_write  # type: ignore[method-assign]
    drv.event_cmd(Opcode.NOP)
    assert busy_at_write == [False, False]  # EQE body, then owner byte


def test_unmapping_guest_memory_under_a_live_eq_is_reported() -> None:
    dev, _, drv = make_device()
    drv.probe()
    dev.dma_unmapped(drv.guest.base + drv.guest.size - (4 << 20), 1 << 20)
    assert dev.counts["errors"] == 0  # nothing of ours there
    dev.dma_unmapped(drv.guest.base, drv.guest.size)
    assert "live EQs [4, 5]" in str(dev.events.since(0)[-1]["message"])


def test_config_command_changes_are_logged() -> None:
    dev, _, drv = make_device(bus_master=False)
    drv.config_write16(0x04, 0x0006)
    drv.config_write16(0x04, 0x0006)  # no change, no event
    assert [e["command"] for e in dev.events.since(0) if e["kind"] == "config"] == [6]
