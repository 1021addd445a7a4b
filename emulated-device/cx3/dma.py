"""Guest memory as the device may touch it: only while Bus Master Enable is set.

The transport gives direct access to guest RAM, which bypasses QEMU's own BME check, so the
model enforces it. Every failure is a `DmaError` the firmware turns into a command status.
"""

from __future__ import annotations

from vfio_user import DeviceContext, DmaError

from .pci import PciConfig


class GuestMemory:
    def __init__(self, pci: PciConfig, ctx: DeviceContext) -> None:
        self._pci = pci
        self.ctx = ctx  # replaced when the transport attaches

    def _check(self, what: str, addr: int, size: int) -> None:
        if not self._pci.bus_master:
            raise DmaError(f"DMA {what} at {addr:#x} while Bus Master Enable is clear")
        if addr < 0 or size < 0 or addr + size > 1 << 64:
            raise DmaError(f"DMA {what} of {size} bytes at {addr:#x} is outside 64-bit space")

    def read(self, addr: int, size: int) -> bytes:
        self._check("read", addr, size)
        return self.ctx.dma_read(addr, size)

    def write(self, addr: int, data: bytes) -> None:
        self._check("write", addr, len(data))
        self.ctx.dma_write(addr, data)

    def fill(self, pages: list[int], page_size: int, size: int, value: int) -> None:
        """Fill the first `size` bytes of a buffer made of `pages` (a ring's init pattern)."""
        for pa in pages:
            n = min(page_size, size)
            if n <= 0:
                return
            self.write(pa, bytes([value]) * n)
            size -= n
