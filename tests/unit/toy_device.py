"""A tiny vfio-user device for the transport's tests, and the fixture that serves it."""

from __future__ import annotations

import mmap
import os
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.unit.vfio_loop import running_loop
from vfio_user import CONFIG_REGION, IRQ_INTX, IRQ_MSIX, Device, DeviceContext, Region
from vfio_user.client import Client
from vfio_user.server import Server

PAGE = 4096
DMA_TRIGGER = 0x200  # an 8-byte write here is a bus address the device then reads 8 bytes at
DOORBELL = 0x300  # a 4-byte write here queues that many steps of background work
STEP_TIME = 0.001  # s a background step takes (the work a doorbell stands for)


class ToyDevice(Device):
    """Two pages of BAR0: page 0 trapped (callbacks), page 1 mapped from a memfd."""

    def __init__(self) -> None:
        self.fd = os.memfd_create("toy-bar0")
        os.ftruncate(self.fd, 2 * PAGE)
        self.mem = mmap.mmap(self.fd, 2 * PAGE)
        self.config = bytearray(256)
        self.config[0:4] = struct.pack("<HH", 0x15B3, 0x1003)
        self.resets = 0
        self.writes: list[tuple[int, bytes]] = []
        self.dma_data = b""  # what the last DMA_TRIGGER read from guest memory
        self.steps: list[int] = []  # background steps done, by their doorbell's write number
        self.ctx: DeviceContext | None = None
        self.regions = {
            0: Region(2 * PAGE, self._read, self._write, fd=self.fd, mmap_areas=[(PAGE, PAGE)]),
            CONFIG_REGION: Region(256, self._cfg_read, self._cfg_write),
        }
        self.irq_counts = {IRQ_INTX: 1, IRQ_MSIX: 4}

    def attach(self, ctx: DeviceContext) -> None:
        self.ctx = ctx

    def close(self) -> None:
        self.mem.close()
        os.close(self.fd)

    def _read(self, off: int, size: int) -> bytes:
        if off == 0x100:
            raise RuntimeError("boom")  # a device bug: the server must survive it
        return self.mem[off : off + size]

    def _write(self, off: int, data: bytes) -> None:
        self.writes.append((off, data))
        self.mem[off : off + len(data)] = data
        if off == DMA_TRIGGER and len(data) == 8 and self.ctx is not None:
            # A DmaError escapes to the transport, which answers the write with EFAULT.
            self.dma_data = self.ctx.dma_read(int.from_bytes(data, "little"), 8)
        if off == DOORBELL and self.ctx is not None:
            self.ctx.defer(self._walk(len(self.writes), int.from_bytes(data, "little")))

    def _walk(self, doorbell: int, count: int) -> Callable[[], bool]:
        def step() -> bool:
            time.sleep(STEP_TIME)  # stands for the work
            self.steps.append(doorbell)
            return self.steps.count(doorbell) < count

        return step

    def _cfg_read(self, off: int, size: int) -> bytes:
        return bytes(self.config[off : off + size])

    def _cfg_write(self, off: int, data: bytes) -> None:
        self.config[off : off + len(data)] = data

    def reset(self) -> None:
        self.resets += 1


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[ToyDevice, Server, Client]]:
    """A ToyDevice served on tmp_path/toy.sock by a loop thread, and a client past VERSION.

    The server's log lines are collected in `server.logs`."""
    dev = ToyDevice()
    logs: list[str] = []
    server = Server(dev, tmp_path / "toy.sock", log=logs.append)
    with running_loop(server.register, server):
        client = Client(tmp_path / "toy.sock")
        client.version()
        server.logs = logs  # type: ignore[attr-defined]
        yield dev, server, client
        client.close()
    server.close()
    dev.close()
