"""Guest memory as the client shared it: DMA windows backed by the file descriptors it sent.

QEMU sends DMA_MAP for every RAM section with the memfd behind it (guest RAM must be a
shared memory backend); the device then reads and writes guest memory directly. Windows
without an fd (ROM, the BAR's own peer-to-peer range) are recorded but not accessible.

Touching a mapping past the end of its file is a SIGBUS, and the client keeps its file: one
that shrinks it would kill the server at the next DMA. So a window is mapped only when its file
is sealed against shrinking (QEMU's memory-backend-memfd seals it by default); any other file
is read and written with pread/pwrite, where memory taken back is a short count, refused.
"""

from __future__ import annotations

import bisect
import fcntl
import mmap
import operator
import os
import stat
from dataclasses import dataclass

from .device import DmaError


@dataclass
class Window:
    iova: int
    size: int
    writable: bool
    mem: mmap.mmap | None = None  # the file mapped: it cannot shrink
    fd: int | None = None  # or the file itself, at `offset`: it may shrink under us
    offset: int = 0

    @property
    def end(self) -> int:
        return self.iova + self.size

    def close(self) -> None:
        if self.mem is not None:
            self.mem.close()
        if self.fd is not None:
            os.close(self.fd)


def _sealed_against_shrinking(fd: int) -> bool:
    try:
        return bool(fcntl.fcntl(fd, fcntl.F_GET_SEALS) & fcntl.F_SEAL_SHRINK)
    except OSError:  # not a memfd: no seals
        return False


def _backing(window: Window, fd: int, writable: bool) -> None:
    """Attach the file `fd` to `window` (mapped, or kept for pread/pwrite); DmaError if unfit."""
    what = f"DMA window {window.iova:#x}+{window.size:#x}"
    try:
        st = os.fstat(fd)
        mode = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE
    except OSError as e:
        raise DmaError(f"{what}: {e}") from e
    if not stat.S_ISREG(st.st_mode):
        raise DmaError(f"{what}: its descriptor is not a file")
    if window.offset + window.size > st.st_size:
        raise DmaError(f"{what} at {window.offset:#x} is beyond its file ({st.st_size:#x})")
    if mode == os.O_WRONLY or (writable and mode == os.O_RDONLY):
        raise DmaError(f"{what}: its file is not open for {'writing' if writable else 'reading'}")
    if not _sealed_against_shrinking(fd):
        window.fd = fd
        return
    prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
    try:
        window.mem = mmap.mmap(fd, window.size, mmap.MAP_SHARED, prot, offset=window.offset)
    except (OSError, ValueError) as e:
        raise DmaError(f"cannot mmap {what}: {e}") from e
    os.close(fd)  # the mapping holds the file


# A window's bus address: what the sorted window list is searched by (every DMA access).
_IOVA = operator.attrgetter("iova")


class DmaSpace:
    def __init__(self) -> None:
        self._windows: list[Window] = []  # sorted by iova, non-overlapping

    def __len__(self) -> int:
        return len(self._windows)

    def map(self, iova: int, size: int, offset: int, fd: int | None, writable: bool) -> None:
        """Add a window. It takes `fd` when it returns; on a DmaError the caller keeps it."""
        if size == 0 or iova + size > 1 << 64:
            raise DmaError(f"invalid DMA window {iova:#x}+{size:#x}")
        i = bisect.bisect_left(self._windows, iova, key=_IOVA)
        prev = self._windows[i - 1] if i else None
        nxt = self._windows[i] if i < len(self._windows) else None
        if (prev and prev.end > iova) or (nxt and nxt.iova < iova + size):
            raise DmaError(f"DMA window {iova:#x}+{size:#x} overlaps an existing one")
        window = Window(iova, size, writable, offset=offset)
        if fd is not None:
            _backing(window, fd, writable)
        self._windows.insert(i, window)

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
            w.close()
        return len(drop)

    def unmap_all(self) -> None:
        for w in self._windows:
            w.close()
        self._windows = []

    def _find(self, addr: int, size: int, write: bool) -> tuple[Window, int]:
        i = bisect.bisect_right(self._windows, addr, key=_IOVA) - 1
        if i < 0 or addr + size > self._windows[i].end:
            raise DmaError(
                f"DMA {'write' if write else 'read'} of {size} bytes at {addr:#x}"
                " outside any mapped window"
            )
        w = self._windows[i]
        if w.mem is None and w.fd is None:
            raise DmaError(f"DMA at {addr:#x}: window {w.iova:#x} was mapped without memory")
        if write and not w.writable:
            raise DmaError(f"DMA write at {addr:#x}: window {w.iova:#x} is read-only")
        return w, addr - w.iova

    def read(self, addr: int, size: int) -> bytes:
        w, off = self._find(addr, size, write=False)
        if w.mem is not None:
            return w.mem[off : off + size]
        assert w.fd is not None
        try:
            data = os.pread(w.fd, size, w.offset + off)
        except OSError as e:
            raise DmaError(f"DMA read of {size} bytes at {addr:#x}: {e}") from e
        if len(data) < size:
            raise DmaError(f"DMA read of {size} bytes at {addr:#x}: the client's memory shrank")
        return data

    def write(self, addr: int, data: bytes) -> None:
        w, off = self._find(addr, len(data), write=True)
        if w.mem is not None:
            w.mem[off : off + len(data)] = data
            return
        assert w.fd is not None
        pos, what = w.offset + off, f"DMA write of {len(data)} bytes at {addr:#x}"
        try:
            # pwrite would grow a file that shrank; the window no longer has that memory.
            if os.fstat(w.fd).st_size < pos + len(data):
                raise DmaError(f"{what}: the client's memory shrank")
            written = os.pwrite(w.fd, data, pos)
        except OSError as e:
            raise DmaError(f"{what}: {e}") from e
        if written < len(data):
            raise DmaError(f"{what}: {written} bytes written")
