"""Test doubles for the cx3 model: guest RAM behind a fake transport, and a tiny mlx4 driver.

`FakeContext` is what the vfio-user transport gives a device: DMA windows (bytearrays), an INTx
line and MSI-X vectors. `Driver` talks to the device the way `mlx4_core` does - BE32 register
writes into BAR0, the HCR toggle protocol, mailboxes in guest RAM, MTTs written by the CPU into
ICM, EQEs read with `next_eqe_sw()` - so the tests exercise the model through its real interface.
"""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from cx3.device import Cx3Device
from cx3.opcodes import Opcode
from vfio_user import CONFIG_REGION, DmaError
from vfio_user.client import Client
from vfio_user.device import BAR0_REGION, BAR2_REGION

PAGE = 4096
HCR = 0x80680
ASYNC_EQN, COMP_EQN = 4, 5
MTT_BASE = 0x110000000
ASYNC_EVENT_MASK = 0x1D1F46FE
# The ICM layout of contract Appendix A: table base, log2 of the number of entries.
QPC_BASE, LOG_QPS = 0x108000000, 18
DMPT_BASE, LOG_MPTS = 0x10C000000, 17
MCG_BASE, LOG_MCGS = 0x110800000, 13
CQC_BASE, LOG_CQS = 0x111400000, 16
LOG_MGM_ENTRY, LOG_MC_HASH = 10, 12


def region_read(dev: Cx3Device, index: int, offset: int, size: int) -> bytes:
    read = dev.regions[index].read
    assert read is not None
    return read(offset, size)


def region_write(dev: Cx3Device, index: int, offset: int, data: bytes) -> None:
    write = dev.regions[index].write
    assert write is not None
    write(offset, data)


class FakeContext:
    def __init__(self) -> None:
        self.windows: dict[int, bytearray] = {}
        self.intx = False
        self.intx_edges: list[bool] = []
        self.msix_on = False
        self.msix_signals: list[int] = []
        self.logs: list[str] = []

    def add_window(self, base: int, size: int) -> None:
        self.windows[base] = bytearray(size)

    def _find(self, addr: int, size: int) -> tuple[bytearray, int]:
        for base, mem in self.windows.items():
            if base <= addr and addr + size <= base + len(mem):
                return mem, addr - base
        raise DmaError(f"{addr:#x}+{size:#x} not mapped")

    def dma_read(self, addr: int, size: int) -> bytes:
        mem, off = self._find(addr, size)
        return bytes(mem[off : off + size])

    def dma_write(self, addr: int, data: bytes) -> None:
        mem, off = self._find(addr, len(data))
        mem[off : off + len(data)] = data

    def set_intx(self, level: bool) -> None:
        self.intx = level
        self.intx_edges.append(level)

    def signal_msix(self, vector: int) -> bool:
        self.msix_signals.append(vector)
        return True

    def msix_enabled(self) -> bool:
        return self.msix_on

    def defer(self, work: Callable[[], bool]) -> None:
        while work():  # the tests look at the effect right after the write
            pass

    def log(self, msg: str) -> None:
        self.logs.append(msg)


class CmdError(Exception):
    def __init__(self, opcode: int, status: int) -> None:
        super().__init__(f"{opcode:#x} failed with status {status:#x}")
        self.status = status


@dataclass
class DriverEq:
    eqn: int
    nent: int
    pages: list[int]
    cons_index: int = 0

    def next_eqe_sw(self, guest: Guest) -> bytes | None:
        """`eq.c: next_eqe_sw()` with 32-byte EQEs."""
        off = (self.cons_index & (self.nent - 1)) * 32
        eqe = guest.read(self.pages[off // PAGE] + off % PAGE, 32)
        return None if bool(eqe[31] & 0x80) ^ bool(self.cons_index & self.nent) else eqe


class Memory(Protocol):
    def dma_read(self, addr: int, size: int) -> bytes: ...

    def dma_write(self, addr: int, data: bytes) -> None: ...


@dataclass
class Guest:
    """Guest RAM at [base, base+size): pages handed out top-down, so consecutive allocations
    are not contiguous. The caller makes `ram` cover that range."""

    ram: Memory
    base: int = 0x1_0000_0000  # above 4 GiB: 64-bit DMA addresses
    size: int = 8 << 20
    _next: int = field(init=False)

    def __post_init__(self) -> None:
        self._next = self.base + self.size

    def alloc(self, size: int = PAGE) -> int:
        self._next -= -(-size // PAGE) * PAGE
        assert self._next >= self.base, "guest RAM exhausted"
        return self._next

    def read(self, addr: int, size: int) -> bytes:
        return self.ram.dma_read(addr, size)

    def write(self, addr: int, data: bytes) -> None:
        self.ram.dma_write(addr, data)


class Bus(Protocol):
    """How the driver reaches the device: directly, or through the vfio-user transport."""

    def bar_write(self, region: int, offset: int, data: bytes) -> None: ...

    def bar_read(self, region: int, offset: int, size: int) -> bytes: ...


@dataclass
class TransportBus:
    """The real wire: BAR accesses as vfio-user REGION_READ/WRITE messages."""

    client: Client
    settle: Callable[[], None] = lambda: None  # wait for the model's background work
    posted_bar0: tuple[int, int] | None = None  # (offset, size) QEMU posts (x-posted-bar0-*)

    def bar_write(self, region: int, offset: int, data: bytes) -> None:
        window = self.posted_bar0
        posted = (
            window is not None
            and region == BAR0_REGION
            and window[0] <= offset
            and offset + len(data) <= window[0] + window[1]
        )
        self.client.write(region, offset, data, posted=posted)
        if region == BAR2_REGION:  # a doorbell: the tests look at its effect at once
            self.settle()

    def bar_read(self, region: int, offset: int, size: int) -> bytes:
        return self.client.read(region, offset, size)


class MemfdRam:
    """Guest RAM as QEMU shares it: a memfd the server maps after DMA_MAP."""

    def __init__(self, base: int, size: int) -> None:
        self.base = base
        self.fd = os.memfd_create("guest-ram")
        os.ftruncate(self.fd, size)
        self.mem = mmap.mmap(self.fd, size)

    def dma_read(self, addr: int, size: int) -> bytes:
        return self.mem[addr - self.base : addr - self.base + size]

    def dma_write(self, addr: int, data: bytes) -> None:
        self.mem[addr - self.base : addr - self.base + len(data)] = data


@dataclass
class DirectBus:
    dev: Cx3Device

    def bar_write(self, region: int, offset: int, data: bytes) -> None:
        region_write(self.dev, region, offset, data)

    def bar_read(self, region: int, offset: int, size: int) -> bytes:
        return region_read(self.dev, region, offset, size)


class Driver:
    """Just enough of mlx4_core to probe the model (the probe of main.c: mlx4_load_one)."""

    def __init__(self, bus: Bus, guest: Guest) -> None:
        self.bus = bus
        self.guest = guest
        self.toggle = 1  # mlx4_cmd_init
        self.token = 0
        self.icm: dict[int, int] = {}  # ICM VA page -> guest PA, as the driver's own tables know
        self.eqs: dict[int, DriverEq] = {}

    # --- registers -----------------------------------------------------------------------

    def read32(self, off: int) -> int:
        return int.from_bytes(self.bus.bar_read(BAR0_REGION, off, 4), "big")

    def write32(self, off: int, value: int) -> None:
        self.bus.bar_write(BAR0_REGION, off, value.to_bytes(4, "big"))

    def uar_write32(self, off: int, value: int) -> None:
        self.bus.bar_write(BAR2_REGION, off, value.to_bytes(4, "big"))

    def config_write16(self, off: int, value: int) -> None:
        self.bus.bar_write(CONFIG_REGION, off, value.to_bytes(2, "little"))

    def doorbell(self, eqn: int, cons_index: int, arm: bool) -> None:
        """`eq_set_ci`."""
        off = (eqn // 4) * PAGE + 0x800 + 8 * (eqn % 4)
        self.uar_write32(off, (cons_index & 0xFFFFFF) | int(arm) << 31)

    # --- commands ------------------------------------------------------------------------

    def pending(self) -> bool:
        status = self.read32(HCR + 0x18)
        return bool(status & 1 << 23) or self.toggle == (status >> 21) & 1

    def post(
        self,
        opcode: int,
        in_param: int = 0,
        in_mod: int = 0,
        op_mod: int = 0,
        out_param: int = 0,
        event: bool = False,
    ) -> int:
        """`mlx4_cmd_post`; returns the token used."""
        assert not self.pending(), "HCR busy (cmd_pending)"
        token = 0xFFFF
        if event:
            self.token = (self.token + 16) & 0xFFFF  # token_mask + 1 with 16 contexts
            token = self.token
        for reg, value in enumerate(
            (in_param >> 32, in_param & 0xFFFFFFFF, in_mod, out_param >> 32, out_param & 0xFFFFFFFF)
        ):
            self.write32(HCR + 4 * reg, value)
        self.write32(HCR + 0x14, token << 16)
        go = 1 << 23 | self.toggle << 21 | int(event) << 22 | op_mod << 12 | opcode
        self.write32(HCR + 0x18, go)
        self.toggle ^= 1
        return token

    def cmd(
        self, opcode: int, in_param: int = 0, in_mod: int = 0, op_mod: int = 0, out_param: int = 0
    ) -> int:
        """A polling-mode command (`mlx4_cmd_poll`); returns the immediate out_param."""
        self.post(opcode, in_param, in_mod, op_mod, out_param)
        assert not self.pending(), "command did not complete synchronously"
        status = self.read32(HCR + 0x18) >> 24
        if status:
            raise CmdError(opcode, status)
        return self.read32(HCR + 0x0C) << 32 | self.read32(HCR + 0x10)

    def cmd_box(self, opcode: int, in_mod: int = 0, op_mod: int = 0, size: int = 256) -> bytes:
        outbox = self.guest.alloc()
        self.cmd(opcode, in_mod=in_mod, op_mod=op_mod, out_param=outbox)
        return self.guest.read(outbox, size)

    def mailbox(self, data: bytes) -> int:
        addr = self.guest.alloc()
        self.guest.write(addr, data.ljust(PAGE, b"\0"))
        return addr

    def event_cmd(self, opcode: int, in_param: int = 0, in_mod: int = 0, op_mod: int = 0) -> bytes:
        """An event-mode command: post, then take its completion EQE from the async EQ."""
        token = self.post(opcode, in_param, in_mod, op_mod, event=True)
        eqe = self.eqs[ASYNC_EQN].next_eqe_sw(self.guest)
        assert eqe is not None, "no completion EQE"
        assert eqe[1] == 0x0A and struct.unpack_from(">H", eqe, 6)[0] == token
        return eqe

    # --- probe steps ---------------------------------------------------------------------

    def reset(self) -> None:
        """`mlx4_reset` as the device sees it."""
        assert self.read32(0xF03FC) == 0, "HW semaphore held"
        self.write32(0xF0010, 1)
        self.toggle = 1  # a new load starts a fresh command interface

    def map_icm(self, va: int, size: int, piece: int = 64 << 10) -> None:
        """MAP_ICM a chunk as several non-contiguous pieces, one page-list entry each."""
        entries = b""
        for off in range(0, size, piece):
            pa = self.guest.alloc(piece)
            self.guest.write(pa, bytes(piece))
            for p in range(0, piece, PAGE):
                self.icm[(va + off + p) // PAGE] = pa + p
            log = (piece // PAGE).bit_length() - 1
            entries += struct.pack(">QQ", va + off, pa | log)
        self.cmd(Opcode.MAP_ICM, in_param=self.mailbox(entries), in_mod=len(entries) // 16)

    def write_mtt(self, index: int, pages: list[int]) -> None:
        """`mlx4_write_mtt_chunk`: the CPU stores the entries into ICM itself."""
        for k, pa in enumerate(pages):
            va = MTT_BASE + 8 * (index + k)
            self.guest.write(self.icm[va // PAGE] + va % PAGE, struct.pack(">Q", pa | 1))

    def create_eq(self, eqn: int, log_nent: int, mtt_index: int, intr: int = 0) -> DriverEq:
        npages = max(1, (32 << log_nent) // PAGE)
        pages = [self.guest.alloc() for _ in range(npages)]
        for pa in pages:
            self.guest.write(pa, bytes(PAGE))  # dma_alloc_coherent memory is zeroed
        self.write_mtt(mtt_index, pages)
        ctx = bytearray(64)
        struct.pack_into(">I", ctx, 0x00, 0x9 << 8)  # state ARMED
        ctx[0x0C] = log_nent
        ctx[0x17] = intr
        struct.pack_into(">I", ctx, 0x1C, mtt_index * 8)
        self.cmd(Opcode.SW2HW_EQ, in_param=self.mailbox(bytes(ctx)), in_mod=eqn)
        self.eqs[eqn] = DriverEq(eqn, 1 << log_nent, pages)
        return self.eqs[eqn]

    def init_hca(self) -> None:
        """`fw.c: mlx4_INIT_HCA` with the Appendix A profile (bases share a be64 with logs)."""
        inbox = bytearray(0x200)
        inbox[0] = 2
        struct.pack_into(">Q", inbox, 0x030, QPC_BASE | LOG_QPS)
        struct.pack_into(">Q", inbox, 0x050, CQC_BASE | LOG_CQS)
        struct.pack_into(">Q", inbox, 0x0C0, MCG_BASE)
        struct.pack_into(">H2xH", inbox, 0x0D2, LOG_MGM_ENTRY, LOG_MC_HASH)
        inbox[0x0DB] = LOG_MCGS
        struct.pack_into(">Q", inbox, 0x0F0, DMPT_BASE)
        inbox[0x0FB] = LOG_MPTS
        struct.pack_into(">Q", inbox, 0x100, MTT_BASE)
        self.cmd(Opcode.INIT_HCA, in_param=self.mailbox(bytes(inbox)))

    def probe(self, comp_log_nent: int = 16, msix: bool = False) -> None:
        """`mlx4_load_one` up to the NOP interrupt test (without the final NOP)."""
        assert self.read32(0x8069C) == 0, "ownership taken"
        self.reset()
        self.cmd_box(Opcode.QUERY_FW)
        self.cmd(Opcode.RUN_FW)
        self.cmd(Opcode.MOD_STAT_CFG, in_param=self.mailbox(b"\0\0\1\0"))
        self.cmd_box(Opcode.QUERY_DEV_CAP)
        self.cmd_box(Opcode.QUERY_PORT, in_mod=1)
        self.cmd_box(Opcode.MOD_STAT_CFG, in_mod=1 << 8, op_mod=2)
        assert self.cmd(Opcode.SET_ICM_SIZE, in_param=0x111801000) == 0
        self.map_icm(0x0, 256 << 10)  # cMPT-QP
        self.map_icm(0x111800000, 64 << 10, piece=64 << 10)  # EQC
        self.map_icm(MTT_BASE, 256 << 10)  # MTT chunk 0, as four 64 KiB pieces
        self.init_hca()
        self.cmd_box(Opcode.QUERY_ADAPTER)
        self.create_eq(ASYNC_EQN, 9, mtt_index=8, intr=0)
        self.create_eq(COMP_EQN, comp_log_nent, mtt_index=512, intr=1 if msix else 0)
        self.cmd(Opcode.MAP_EQ, in_param=ASYNC_EVENT_MASK, in_mod=ASYNC_EQN)
        self.doorbell(ASYNC_EQN, 0, arm=True)

    def interrupt(self) -> list[bytes]:
        """`mlx4_interrupt` (INTx): clr_int, drain both EQs, re-arm both."""
        self.write32(0x80704, 1)
        found = []
        for queue in self.eqs.values():
            while (eqe := queue.next_eqe_sw(self.guest)) is not None:
                found.append(eqe)
                queue.cons_index += 1
            self.doorbell(queue.eqn, queue.cons_index, arm=True)
        return found


def make_device(
    msix: bool = False, bus_master: bool = True
) -> tuple[Cx3Device, FakeContext, Driver]:
    dev = Cx3Device()
    ctx = FakeContext()
    ctx.msix_on = msix
    dev.attach(ctx)
    guest = Guest(ctx)
    ctx.add_window(guest.base, guest.size)
    driver = Driver(DirectBus(dev), guest)
    if bus_master:
        driver.config_write16(0x04, 0x0006)  # MEMORY | MASTER
    return dev, ctx, driver
