"""Guest memory as the client shared it: DMA windows backed by mmapped file descriptors.

QEMU sends DMA_MAP for every RAM section with the memfd behind it (guest RAM must be a
shared memory backend); the device then reads and writes guest memory directly. Windows
without an fd (ROM, the BAR's own peer-to-peer range) are recorded but not accessible.
"""

from __future__ import annotations

import bisect
import mmap
import os
from dataclasses import dataclass

from .device import DmaError


@dataclass
class Window:
    iova: int
    size: int
    writable: bool
    mem: mmap.mmap | None  # None: mapped without an fd

    @property
    def end(self) -> int:
        return self.iova + self.size


class DmaSpace:
    def __init__(self) -> None:
        self._windows: list[Window] = []  # sorted by iova, non-overlapping

    def __len__(self) -> int:
        return len(self._windows)

    def map(self, iova: int, size: int, offset: int, fd: int | None, writable: bool) -> None:
        """Add a window; takes ownership of `fd` (closed here once mapped)."""
        try:
            if size == 0 or iova + size > 1 << 64:
                raise DmaError(f"invalid DMA window {iova:#x}+{size:#x}")
            i = bisect.bisect_left([w.iova for w in self._windows], iova)
            prev = self._windows[i - 1] if i else None
            nxt = self._windows[i] if i < len(self._windows) else None
            if (prev and prev.end > iova) or (nxt and nxt.iova < iova + size):
                raise DmaError(f"DMA window {iova:#x}+{size:#x} overlaps an existing one")
            mem = None
            if fd is not None:
                prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
                try:
                    mem = mmap.mmap(fd, size, mmap.MAP_SHARED, prot, offset=offset)
                except (OSError, ValueError) as e:
                    raise DmaError(f"cannot mmap DMA window {iova:#x}+{size:#x}: {e}") from e
            self._windows.insert(i, Window(iova, size, writable, mem))
        finally:
            if fd is not None:
                os.close(fd)

    def unmap(self, iova: int, size: int) -> int:
        """Drop every window inside [iova, iova+size); returns how many were dropped."""
        end = iova + size
        keep, drop = [], []
        for w in self._windows:
            if w.iova >= iova and w.end <= end:
                drop.append(w)
            elif w.iova < end and w.end > iova:
                raise DmaError(f"unmap {iova:#x}+{size:#x} splits window {w.iova:#x}+{w.size:#x}")
            else:
                keep.append(w)
        self._windows = keep
        for w in drop:
            if w.mem is not None:
                w.mem.close()
        return len(drop)

    def unmap_all(self) -> None:
        for w in self._windows:
            if w.mem is not None:
                w.mem.close()
        self._windows = []

    def _find(self, addr: int, size: int, write: bool) -> tuple[Window, int]:
        i = bisect.bisect_right([w.iova for w in self._windows], addr) - 1
        if i < 0 or addr + size > self._windows[i].end:
            raise DmaError(
                f"DMA {'write' if write else 'read'} of {size} bytes at {addr:#x}"
                " outside any mapped window"
            )
        w = self._windows[i]
        if w.mem is None:
            raise DmaError(f"DMA at {addr:#x}: window {w.iova:#x} was mapped without memory")
        if write and not w.writable:
            raise DmaError(f"DMA write at {addr:#x}: window {w.iova:#x} is read-only")
        return w, addr - w.iova

    def read(self, addr: int, size: int) -> bytes:
        w, off = self._find(addr, size, write=False)
        assert w.mem is not None
        return w.mem[off : off + size]

    def write(self, addr: int, data: bytes) -> None:
        w, off = self._find(addr, len(data), write=True)
        assert w.mem is not None
        w.mem[off : off + len(data)] = data
