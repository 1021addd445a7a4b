"""`Cx3Device`: the ConnectX-3 model as a vfio-user device, tying the pieces together.

Regions: config space, BAR0 (CR-space memfd, all but four 4 KiB pages mapped straight into the
guest) and BAR2 (UAR pages with the EQ, send and CQ doorbells, then QEMU's MSI-X table and our
PBA; fully trapped). Nothing here blocks or raises on guest input: bad input is logged and answered.
"""

from __future__ import annotations

import collections
import sys
from collections.abc import Callable

from vfio_user import (
    CONFIG_REGION,
    IRQ_INTX,
    IRQ_MSIX,
    Device,
    DeviceContext,
    DmaError,
    Region,
)
from vfio_user.device import BAR0_REGION, BAR2_REGION

from . import caps, cq, crspace, eq, hcr, layout, opcodes, pci, qp
from .cq import CompletionQueue
from .crspace import CrSpace
from .datapath import Datapath
from .dma import GuestMemory
from .eq import EqError, EventQueue
from .events import CrdumpStore, EventLog, Value
from .faults import Faults
from .firmware import Event, Firmware, Result
from .hcr import Hcr
from .pci import PciConfig

BAR2_SIZE = 2 << 20
UAR_SIZE = 1 << 20  # UAR pages; the MSI-X table and PBA follow
PBA_SIZE = pci.MSIX_VECTORS // 8


class _Detached:
    """The context before the transport attaches: no guest memory, no interrupts."""

    def dma_read(self, addr: int, size: int) -> bytes:
        raise DmaError("no transport attached")

    def dma_write(self, addr: int, data: bytes) -> None:
        raise DmaError("no transport attached")

    def set_intx(self, level: bool) -> None:
        pass

    def signal_msix(self, vector: int) -> bool:
        return False

    def msix_enabled(self) -> bool:
        return False

    def defer(self, work: Callable[[], bool]) -> None:
        while work():
            pass

    def log(self, msg: str) -> None:
        print(f"cx3: {msg}", file=sys.stderr)


class Cx3Device(Device):
    def __init__(
        self, *, mac: int = caps.MAC, event_capacity: int = 10_000, crdump_capacity: int = 16
    ) -> None:
        """`mac`: port 1's MAC (see `port.mac_from_guid` to derive one from a port GUID)."""
        self.events = EventLog(event_capacity)
        self.crdumps = CrdumpStore(crdump_capacity)
        self.counts: collections.Counter[str] = collections.Counter()
        self.cr = CrSpace(on_bad_write=self._bad_bar0_write)
        self.cr.set_word(layout.HW_DEV_ID, layout.CONNECTX3_HW_DEV_ID)  # a register: kept
        self.pci = PciConfig(self.cr)
        self.hcr = Hcr(self.cr)
        self._ctx: DeviceContext = _Detached()
        self.mem = GuestMemory(self.pci, self._ctx)
        self.firmware = Firmware(self.mem, mac)
        self.faults = Faults(self.cr, self.firmware, self.events, self.set_link)
        self.datapath = Datapath(
            self.firmware, self.mem, self._completion_event, self._post_async, self._error
        )
        self.intx_asserted = False
        self._cq_doorbell_word0: dict[int, int] = {}  # UAR page -> first half of a split write
        self._install_hooks()
        self.regions = {
            CONFIG_REGION: Region(pci.SIZE, read=self.pci.read, write=self._config_write),
            BAR0_REGION: Region(
                layout.SIZE,
                read=self.cr.read,
                write=self.cr.write,
                fd=self.cr.fd,
                mmap_areas=crspace.mmap_areas(),
            ),
            BAR2_REGION: Region(BAR2_SIZE, read=self._bar2_read, write=self._bar2_write),
        }
        self.irq_counts = {IRQ_INTX: 1, IRQ_MSIX: pci.MSIX_VECTORS}

    def _install_hooks(self) -> None:
        cr = self.cr
        cr.hook([layout.HCR_OFFSET + hcr.STATUS], self._hcr_write)
        cr.hook([layout.CLR_INT_OFFSET, layout.CLR_INT_OFFSET + 4], self._clr_int)
        cr.hook([layout.RESET], self._reset_write)
        cr.hook([layout.BLOCK_VOLATILE], self._block_volatile)
        cr.hook([layout.CR_FILTER], self._cr_filter)
        cr.hook([layout.FLUSH], self._flush)
        read_only = [layout.OWNERSHIP, layout.SEMAPHORE, layout.HW_DEV_ID]
        read_only += range(layout.CATAS_OFFSET, layout.CATAS_OFFSET + 4 * layout.CATAS_DWORDS, 4)
        read_only += range(layout.HEALTH_OFFSET, layout.BLOCK_VOLATILE, 4)
        cr.hook(read_only, self._read_only)

    # --- vfio-user hooks -------------------------------------------------------------------

    def attach(self, ctx: DeviceContext) -> None:
        self._ctx = ctx
        self.mem.ctx = ctx

    def reset(self) -> None:
        self._reset("vfio-user")

    def dma_unmapped(self, addr: int, size: int) -> None:
        hit = [
            q.eqn
            for q in self.firmware.state.eqs.values()
            if any(addr <= pa < addr + size for pa in q.pages)
        ]
        if hit:
            self._error(f"guest unmapped {addr:#x}+{size:#x} under live EQs {hit}")

    def close(self) -> None:
        self.cr.close()

    # --- control-side API: ground truth (the knobs are in self.faults) ---------------------

    def set_link(self, up: bool) -> None:
        """Plug (True) or pull the cable between the two ports (`cable.py`). An open port's
        link follows it, and the firmware reports each change with a PORT_CHANGE event (with
        its interrupt): pulling it takes both ports down."""
        events = self.firmware.set_cable(up)
        links = {f"link_up_{n}": self.firmware.link_up(n) for n in self.firmware.state.ports}
        self.events.add("link", cable=up, **links)
        self._post_async(events)
        self._resume()  # a frame a pause held drops if the link went with the cable

    def read_bar0(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0 or offset + length > layout.SIZE:
            raise ValueError(f"BAR0 range {offset:#x}+{length:#x} is outside 0..{layout.SIZE:#x}")
        return self.cr.read(offset, length)

    def state(self) -> dict[str, object]:
        return {
            **self.firmware.describe(),
            "hcr_busy": self.hcr.busy,
            "bus_master": self.pci.bus_master,
            "intx_asserted": self.intx_asserted,
            "msix_enabled": self._ctx.msix_enabled(),
            "faults": self.faults.describe(),
            "counts": {**self.counts, "gateway_reads": self.pci.gateway_reads},
            "datapath": dict(self.datapath.counts),
            "crdumps": self.crdumps.next_index,
            "events": self.events.next_index,
        }

    def _config_write(self, offset: int, data: bytes) -> None:
        before = self.pci.command
        self.pci.write(offset, data)
        if self.pci.command != before:  # MEM/BME/INTx-disable flips tell the reset story
            self.events.add("config", command=self.pci.command)

    # --- BAR0 registers --------------------------------------------------------------------

    def _hcr_write(self, offset: int, value: int) -> None:
        if self.hcr.busy:
            self._error(f"HCR go word {value:#010x} written while a command is pending; ignored")
            return
        cmd = self.hcr.post(value)
        if cmd is not None:
            self._run(cmd)
        self._resume()

    def _run(self, cmd: hcr.Command) -> None:
        self.counts["commands"] += 1
        name = opcodes.name(cmd.opcode)
        mode = "event" if cmd.event else "poll"
        log: dict[str, Value] = {"opcode": cmd.opcode, "name": name, "mode": mode}
        log |= {"op_modifier": cmd.op_modifier, "in_modifier": cmd.in_modifier}
        if self.faults.take_timeout(cmd.opcode):
            self.events.add("cmd", **log, status=None, hung=True)  # GO stays set, no EQE
            return
        status = self.faults.take_closing_failure(cmd.opcode)
        if status is None:
            result = self.firmware.execute(cmd)
        else:
            result = Result(status, error=f"injected failure of closing command {name}")
        self.hcr.complete(result.status, result.out_imm)
        self.events.add(
            "cmd", **log, status=result.status, error=result.error, injected=status is not None
        )
        if result.error is not None:
            self._ctx.log(f"{name} ({mode}) -> status {result.status:#04x}: {result.error}")
        if cmd.event:  # after GO is clear, as the driver expects
            eqe = eq.command_eqe(cmd.token, result.status, result.out_imm or 0)
            self._post_event(eq.EVENT_CMD, eqe)
        self._post_async(result.events)

    def _post_async(self, events: tuple[Event, ...]) -> None:
        """Asynchronous events go to the EQ mapped for them; unmapped, the hardware drops them."""
        for event_type, eqe in events:
            mapped = event_type in self.firmware.state.event_map
            self.events.add("async_event", type=event_type, subtype=eqe[3], posted=mapped)
            if mapped:
                self._post_event(event_type, eqe)

    def _post_event(self, event_type: int, eqe: bytes) -> None:
        try:
            queue = self.firmware.post_event(event_type, eqe)
        except (DmaError, EqError) as e:
            self._error(f"event {event_type:#04x} lost: {e}")
            return
        if queue is not None:
            self._interrupt(queue)

    def _interrupt(self, queue: EventQueue, hot: bool = False) -> None:
        """Raise `queue`'s interrupt; `hot`: a completion's, logged as a per-frame event."""
        self.counts["interrupts"] += 1
        if self._ctx.msix_enabled():
            delivered = self._ctx.signal_msix(queue.intr)
            irq: dict[str, Value] = {"mode": "msix", "vector": queue.intr}
        elif self.pci.intx_disabled:
            delivered = False
            irq = {"mode": "intx"}
        else:
            self.intx_asserted = True
            self._ctx.set_intx(True)
            delivered = True
            irq = {"mode": "intx"}
        if hot:
            self.events.hot("irq", queue.eqn, eqn=queue.eqn, delivered=delivered, **irq)
        else:
            self.events.add("irq", eqn=queue.eqn, delivered=delivered, **irq)

    def _clr_int(self, offset: int, value: int) -> None:
        self.events.add("clr_int", offset=offset, value=value)
        if self.intx_asserted:
            self.intx_asserted = False
            self._ctx.set_intx(False)

    def _reset_write(self, offset: int, value: int) -> None:
        if value == 1:
            self._reset("bar0")
        else:
            self._error(f"reset register written with {value:#x}; only 1 resets")

    def _reset(self, source: str) -> None:
        """Drop all firmware state; config space and the health buffer are untouched."""
        self.counts["resets"] += 1
        state = self.firmware.state  # what the reset tears down, for the event log
        dropped = {"eqs": len(state.eqs), "cqs": len(state.cqs), "qps": len(state.qps)}
        self.firmware.reset()
        self.events.restart_tallies()
        self._cq_doorbell_word0.clear()
        self.hcr.reset()
        self.cr.fill(layout.CATAS_OFFSET, 4 * layout.CATAS_DWORDS)
        self.cr.set_word(layout.BLOCK_VOLATILE, 0)
        if self.intx_asserted:
            self.intx_asserted = False
            self._ctx.set_intx(False)
        self.events.add("reset", source=source, **dropped)

    def _block_volatile(self, offset: int, value: int) -> None:
        self.cr.set_word(offset, value)
        if value == 1:  # the driver's crdump is about to read all of BAR0, then the health buffer
            health = self.cr.read(layout.HEALTH_OFFSET, layout.HEALTH_SIZE)
            record = self.crdumps.capture(self.cr.image(), health)
            self.events.add("crdump", crdump=record.index)
        elif value == 0:  # it has read both
            self.events.add("crdump_end")

    def _flush(self, offset: int, value: int) -> None:
        # A flush completes at once: the register keeps reading 0, which mstflint waits for.
        self.events.add("flush", value=value)

    def _cr_filter(self, offset: int, value: int) -> None:
        self.cr.set_word(offset, value)
        self.events.add("cr_filter", value=value)

    def _read_only(self, offset: int, value: int) -> None:
        self.events.add("ro_write", offset=offset, value=value)

    def _bad_bar0_write(self, offset: int, size: int, register: int) -> None:
        self._error(f"BAR0 write of {size} bytes at {offset:#x} splits register {register:#x}")

    # --- BAR2: UAR doorbells ---------------------------------------------------------------

    def _bar2_read(self, offset: int, size: int) -> bytes:
        pba = pci.MSIX_PBA_OFFSET
        if not pba <= offset < pba + PBA_SIZE:
            self.events.add("bar2_read", offset=offset, size=size)
        return bytes(size)  # nothing is ever pending in the PBA: QEMU does the masking

    def _bar2_write(self, offset: int, data: bytes) -> None:
        page, in_page = divmod(offset, eq.UAR_PAGE)
        value = int.from_bytes(data, "big")
        if offset >= UAR_SIZE:
            self._error(f"BAR2 write of {data.hex()} at {offset:#x} (outside the UARs) ignored")
        elif in_page == qp.SEND_DOORBELL and len(data) == 4:
            self.counts["send_doorbells"] += 1
            self.events.hot("send_doorbell", value >> 8, uar=page, qpn=value >> 8)
            # Posted, as on the card: the vCPU goes on while the model walks the ring.
            walk = self.datapath.send_doorbell(value >> 8)
            if walk is not None:
                self._ctx.defer(walk)
        elif in_page == cq.DOORBELL and len(data) == 8:
            self._cq_doorbell(page, value >> 32, value & 0xFFFFFFFF, writes=1)
        elif in_page == cq.DOORBELL and len(data) == 4:  # a 64-bit write split in two
            self._cq_doorbell_word0[page] = value
        elif in_page == cq.DOORBELL + 4 and len(data) == 4 and page in self._cq_doorbell_word0:
            self._cq_doorbell(page, self._cq_doorbell_word0.pop(page), value, writes=2)
        else:
            self._eq_doorbell(offset, data)
        self._resume()

    def _resume(self) -> None:
        """The card looks again at the send queues its ports' pause frames stopped (the
        driver has had the chance to post receive WQEs: datapath.py, flow control)."""
        for walk in self.datapath.resume():
            self._ctx.defer(walk)

    def _cq_doorbell(self, page: int, word0: int, consumer: int, writes: int) -> None:
        self.counts["cq_doorbells"] += 1
        cqn = word0 & cq.CQN_MASK
        queue = self.firmware.state.cqs.get(cqn)
        if queue is not None:
            self.datapath.cq_doorbell(queue, word0, consumer)
        self.events.hot(
            "cq_doorbell",
            cqn,
            uar=page,
            cqn=cqn,
            cmd=(word0 >> 24) & 3,
            consumer=consumer,
            writes=writes,  # 1: one 64-bit write; 2: QEMU split it in two
        )
        if queue is None:
            self._error(f"CQ arm doorbell for CQ {cqn:#x}, which is not hardware-owned")

    def _completion_event(self, queue: CompletionQueue) -> None:
        """A completion on an armed CQ: a type 0x00 EQE on the CQ's EQ, and its interrupt."""
        self.counts["completion_events"] += 1
        target = self.firmware.state.eqs.get(queue.ctx.comp_eqn)
        if target is None:
            self._error(f"CQ {queue.cqn:#x}: completion EQ {queue.ctx.comp_eqn} is gone")
            return
        try:
            fire = target.post(self.mem, eq.completion_eqe(queue.cqn))
        except (DmaError, EqError) as e:
            self._error(f"completion event of CQ {queue.cqn:#x} lost: {e}")
            return
        if fire:
            self._interrupt(target, hot=True)

    def _eq_doorbell(self, offset: int, data: bytes) -> None:
        eqn = eq.doorbell_eqn(offset) if len(data) == 4 else None
        queue = None if eqn is None else self.firmware.state.eqs.get(eqn)
        if queue is None:
            self._error(f"BAR2 write of {data.hex()} at {offset:#x} (EQ {eqn}) ignored")
            return
        value = int.from_bytes(data, "big")
        fire = queue.doorbell(value)
        arm = bool(value >> 31)
        self.events.hot("doorbell", queue.eqn, eqn=queue.eqn, consumer=queue.consumer, arm=arm)
        if fire:
            self._interrupt(queue)

    def _error(self, message: str) -> None:
        self.counts["errors"] += 1
        self.events.add("error", message=message)
        self._ctx.log(message)
