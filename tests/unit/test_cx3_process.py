"""`python -m cx3` end to end without a VM: the vfio-user test client plays QEMU."""

from __future__ import annotations

import mmap
import os
from collections import Counter
from typing import Any

from cx3 import crspace, hcr, layout
from cx3.client import ControlClient
from cx3.opcodes import Opcode
from tests.unit.cx3_guest import Driver, Guest, MemfdRam, TransportBus
from tests.unit.model_proc import Model
from vfio_user import IRQ_INTX
from vfio_user import protocol as p
from vfio_user.client import Client
from vfio_user.device import BAR0_REGION

GUEST_BASE = 0x1_0000_0000
GUEST_SIZE = 8 << 20


def test_probe_through_the_transport(model: Model) -> None:
    ram = MemfdRam(GUEST_BASE, GUEST_SIZE)
    with Client(model.socket) as client, ControlClient(model.control) as control:
        client.version()
        client.dma_map(GUEST_BASE, GUEST_SIZE, os.dup(ram.fd))
        bar0 = client.region_info(BAR0_REGION)
        assert bar0.size == layout.SIZE and bar0.fd is not None
        assert bar0.mmap_areas == crspace.mmap_areas()
        cr_view = mmap.mmap(bar0.fd, layout.SIZE, prot=mmap.PROT_READ)
        intx = os.eventfd(0, os.EFD_NONBLOCK)
        client.set_irq_eventfds(IRQ_INTX, 0, [os.dup(intx)])

        driver = Driver(TransportBus(client), Guest(ram, GUEST_BASE, GUEST_SIZE))
        driver.config_write16(0x04, 0x0006)
        driver.probe()
        driver.event_cmd(Opcode.NOP, in_mod=0x1F)
        assert os.eventfd_read(intx) == 1  # INTx reached the eventfd
        assert len(driver.interrupt()) == 1
        state = control.state()
        assert state["fw_running"] and [q["eqn"] for q in state["eqs"]] == [4, 5]

        control.fault("catas")
        assert cr_view[0x1F000:0x1F004] == bytes.fromhex("0fffffff")  # what the guest maps
        driver.write32(0x1F140, 1)
        driver.write32(0x1F140, 0)
        (info,) = control.crdumps()
        dump = control.crdump(info.index)
        assert dump.image[0x1F000:0x1F004] == bytes.fromhex("0fffffff")
        assert dump.image[0x1F140:0x1F144] == b"\0\0\0\1"
        assert dump.image[:0x1F000] == cr_view[:0x1F000]

        client.reset()  # VFIO_USER_DEVICE_RESET
        state = control.state()
        assert state["eqs"] == [] and not state["fw_running"]
        assert cr_view[0x1F000:0x1F004] == b"\0\0\0\0"
        kinds = {e["kind"] for e in control.events().events}
        assert {"cmd", "irq", "clr_int", "doorbell", "crdump", "reset", "fault"} <= kinds
        cr_view.close()
    assert model.proc.poll() is None


def test_a_probe_with_the_hcr_parameters_posted(model: Model) -> None:
    """QEMU posts the HCR's parameter writes (x-posted-bar0-*): the model latches them
    unanswered, and runs each command at its GO write as before."""
    ram = MemfdRam(GUEST_BASE, GUEST_SIZE)
    with Client(model.socket) as client, ControlClient(model.control) as control:
        client.version()
        client.dma_map(GUEST_BASE, GUEST_SIZE, os.dup(ram.fd))
        sent = Counter[bool]()
        request = client.request

        def counted(command: int, payload: bytes = b"", fds: Any = None, flags: int = 0) -> Any:
            sent[bool(flags & p.Flags.NO_REPLY)] += 1
            return request(command, payload, fds, flags)

        client.request = counted  # type: ignore[method-assign]
        bus = TransportBus(client, posted_bar0=hcr.PARAMETERS)
        driver = Driver(bus, Guest(ram, GUEST_BASE, GUEST_SIZE))
        driver.config_write16(0x04, 0x0006)
        driver.probe()
        driver.event_cmd(Opcode.NOP, in_mod=0x1F)
        commands = sum(1 for e in control.events().events if e["kind"] == "cmd")
        # Six posted writes a command; a reply to any of them would have answered a later
        # request in its place (the client checks each reply's id).
        assert sent[True] == 6 * commands and commands > 10
        status = client.read(BAR0_REGION, layout.HCR_OFFSET + hcr.STATUS, 4)
        assert not int.from_bytes(status, "big") & hcr.GO, "the last command is done"
        state = control.state()
        assert state["fw_running"] and [q["eqn"] for q in state["eqs"]] == [4, 5]
