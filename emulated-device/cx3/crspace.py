"""BAR0, the 1 MiB "CR-space": a memfd the client maps into the guest, minus trapped pages.

Everything is stored big-endian in the memfd bytes, registers included, so trapped reads are
plain byte copies (no side effects, as crdump requires) and a snapshot of the memfd is exactly
what the guest would read. Writes to hooked dwords go to their hook instead of memory; the
hook decides whether the value is kept.
"""

from __future__ import annotations

import bisect
import fcntl
import mmap
import os
from collections.abc import Callable, Iterable

from .layout import PAGE, REGISTERS, SIZE, TRAPPED_PAGES

#: Register ranges the model owns: a loaded image never overrides them (CR_FILTER is not one).
OWNED_RANGES = tuple((reg.offset, reg.size) for reg in REGISTERS if reg.owned)

WriteHook = Callable[[int, int], None]  # (dword offset, value)
BadWrite = Callable[[int, int, int], None]  # (offset, size, dword hit) for partial writes


def mmap_areas() -> list[tuple[int, int]]:
    """(offset, size) of everything except the trapped pages, for the client to map."""
    areas = []
    start = 0
    for page in sorted(TRAPPED_PAGES):
        if page > start:
            areas.append((start, page - start))
        start = page + PAGE
    if start < SIZE:
        areas.append((start, SIZE - start))
    return areas


class CrSpace:
    size = SIZE

    def __init__(self, on_bad_write: BadWrite) -> None:
        self.fd = os.memfd_create("cx3-crspace", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        os.ftruncate(self.fd, SIZE)
        # The client gets this fd: shrunk under our mapping, our next access would be a SIGBUS.
        seals = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL
        fcntl.fcntl(self.fd, fcntl.F_ADD_SEALS, seals)
        self._mem = mmap.mmap(self.fd, SIZE)
        self._hooks: dict[int, WriteHook] = {}
        self._hook_offsets: list[int] = []  # sorted, to find hooks inside a write quickly
        self._on_bad_write = on_bad_write

    def close(self) -> None:
        self._mem.close()
        os.close(self.fd)

    def hook(self, offsets: Iterable[int], fn: WriteHook) -> None:
        for off in offsets:
            self._hooks[off] = fn
            bisect.insort(self._hook_offsets, off)

    def read(self, offset: int, size: int) -> bytes:
        return self._mem[offset : offset + size]

    def word(self, offset: int) -> int:
        return int.from_bytes(self._mem[offset : offset + 4], "big")

    def set_word(self, offset: int, value: int) -> None:
        self._mem[offset : offset + 4] = value.to_bytes(4, "big")

    def fill(self, offset: int, size: int, byte: int = 0) -> None:
        self._mem[offset : offset + size] = bytes([byte]) * size

    def store(self, offset: int, data: bytes) -> None:
        """Model-side write: bypasses the hooks."""
        self._mem[offset : offset + len(data)] = data

    def image(self) -> bytes:
        return self._mem[:]

    def load_image(self, image: bytes) -> None:
        """Replace the content, keeping the live registers (OWNED_RANGES)."""
        kept = [(off, self.read(off, size)) for off, size in OWNED_RANGES]
        self._mem[:] = image
        for off, data in kept:
            self.store(off, data)

    def write(self, offset: int, data: bytes) -> None:
        """Guest write: hooked dwords need a full aligned 32-bit write; the rest is memory."""
        end = offset + len(data)
        first = bisect.bisect_left(self._hook_offsets, offset & ~3)
        if first == len(self._hook_offsets) or self._hook_offsets[first] >= end:
            self._mem[offset:end] = data  # no register involved: one copy
            return
        pos = offset
        while pos < end:
            dword = pos & ~3
            stop = min(end, dword + 4)
            piece = data[pos - offset : stop - offset]
            hook = self._hooks.get(dword)
            if hook is None:
                self._mem[pos:stop] = piece
            elif pos == dword and stop == dword + 4:
                hook(dword, int.from_bytes(piece, "big"))
            else:
                self._on_bad_write(offset, len(data), dword)
            pos = stop
