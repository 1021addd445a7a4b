"""ICM: the firmware's context memory, which the driver supplies as host pages (icm.c).

MAP_ICM hands over (ICM virtual address, host physical address, log size) entries; the model
keeps a 4 KiB-page map VA -> PA. The one table the model reads is the MTT, where the driver's
CPU stores `page_dma | present` for every EQ page (there is no WRITE_MTT command).
"""

from __future__ import annotations

import struct

from .dma import GuestMemory

PAGE_SHIFT = 12
PAGE = 1 << PAGE_SHIFT
MAP_ENTRY_SIZE = 16
MAX_MAP_ENTRIES = 4096 // MAP_ENTRY_SIZE  # one mailbox
MAX_ENTRY_LOG = 12  # 16 MiB per entry; the driver's chunks are at most 256 KiB
MAX_PAGES = 1 << 20  # 4 GiB of ICM, a guard against a runaway page list
MTT_ENTRY_SIZE = 8
MTT_PRESENT = 1


class IcmError(Exception):
    """An ICM address the driver never mapped, or a page list the model refuses."""


class IcmMap:
    def __init__(self) -> None:
        self._pages: dict[int, int] = {}  # ICM VA page number -> host PA page number

    def __len__(self) -> int:
        return len(self._pages)

    def clear(self) -> None:
        self._pages.clear()

    def map_entries(self, entries: bytes) -> int:
        """Apply a MAP_ICM page list; returns the number of 4 KiB pages mapped."""
        decoded = []
        total = 0
        for off in range(0, len(entries), MAP_ENTRY_SIZE):
            va, pa_log = struct.unpack_from(">QQ", entries, off)
            log = pa_log & 0x3F
            if log > MAX_ENTRY_LOG:
                raise IcmError(f"MAP_ICM entry {off // MAP_ENTRY_SIZE} covers 4 KiB << {log}")
            if va & (PAGE - 1):
                raise IcmError(f"MAP_ICM entry {off // MAP_ENTRY_SIZE}: VA {va:#x} not aligned")
            decoded.append((va >> PAGE_SHIFT, pa_log >> PAGE_SHIFT, 1 << log))
            total += 1 << log
        if len(self._pages) + total > MAX_PAGES:
            raise IcmError(f"MAP_ICM would map more than {MAX_PAGES} pages")
        for va_page, pa_page, count in decoded:  # overlaps simply remap, like the real FW
            for i in range(count):
                self._pages[va_page + i] = pa_page + i
        return total

    def unmap(self, va: int, count: int) -> int:
        """Drop the pages in [va, va + count pages); missing ones are fine. Returns dropped."""
        first = va >> PAGE_SHIFT
        if count <= len(self._pages):
            gone = [p for p in range(first, first + count) if p in self._pages]
        else:  # a huge count: walk the map instead of the range
            gone = [p for p in self._pages if first <= p < first + count]
        for p in gone:
            del self._pages[p]
        return len(gone)

    def translate(self, va: int) -> int:
        try:
            return self._pages[va >> PAGE_SHIFT] << PAGE_SHIFT | (va & (PAGE - 1))
        except KeyError:
            raise IcmError(f"ICM address {va:#x} is not mapped") from None

    def read(self, mem: GuestMemory, va: int, size: int) -> bytes:
        """Read ICM contents, page by page (consecutive VA pages need not be contiguous)."""
        parts = []
        while size > 0:
            n = min(size, PAGE - (va & (PAGE - 1)))
            parts.append(mem.read(self.translate(va), n))
            va += n
            size -= n
        return b"".join(parts)

    def mtt_pages(self, mem: GuestMemory, mtt_va: int, count: int) -> list[int]:
        """Host addresses of `count` buffer pages described by MTT entries at `mtt_va`."""
        raw = self.read(mem, mtt_va, count * MTT_ENTRY_SIZE)
        pages = []
        for k in range(count):
            (entry,) = struct.unpack_from(">Q", raw, k * MTT_ENTRY_SIZE)
            if not entry & MTT_PRESENT:
                raise IcmError(f"MTT entry {k} at ICM {mtt_va + 8 * k:#x} is not present")
            pages.append(entry & ~(PAGE - 1))
        return pages


class MttBuffer:
    """A work queue's buffer as the device sees it: `page_size` pages whose addresses are MTT
    entries at ICM `mtt_va` (the driver's CPU wrote them before the QP left RST). Entries are
    read on first use and kept: they cannot change while the queue lives."""

    def __init__(self, icm: IcmMap, mem: GuestMemory, mtt_va: int, page_size: int) -> None:
        self._icm = icm
        self._mem = mem
        self._mtt_va = mtt_va
        self.page_size = page_size
        self._pages: dict[int, int] = {}

    def _page(self, k: int) -> int:
        pa = self._pages.get(k)
        if pa is None:
            (entry,) = struct.unpack(">Q", self._icm.read(self._mem, self._mtt_va + 8 * k, 8))
            if not entry & MTT_PRESENT:
                raise IcmError(f"MTT entry {k} at ICM {self._mtt_va + 8 * k:#x} is not present")
            pa = self._pages[k] = entry & ~(PAGE - 1)
        return pa

    def address(self, offset: int) -> int:
        k, within = divmod(offset, self.page_size)
        return self._page(k) + within

    def read(self, offset: int, size: int) -> bytes:
        """Raises IcmError (no MTT entry) or DmaError (the page is not guest memory)."""
        parts = []
        while size > 0:
            n = min(size, self.page_size - offset % self.page_size)
            parts.append(self._mem.read(self.address(offset), n))
            offset += n
            size -= n
        return b"".join(parts)
