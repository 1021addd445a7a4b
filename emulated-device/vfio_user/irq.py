"""Interrupts as eventfds the client handed over with SET_IRQS.

INTx is level-triggered but QEMU automasks it: after one signal the line stays masked
until QEMU sends UNMASK (after the guest's next trapped BAR access). We therefore track
the device's line level and re-signal on UNMASK while the line is still high.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field

from . import protocol as p
from .device import IRQ_INTX, IRQ_MSIX, NUM_IRQ_INDEXES


def _check_eventfd(fd: int) -> None:
    """Refuse anything but an eventfd, and never block writing it: a pipe, or an eventfd the
    client has filled, would hold up the whole loop at the next interrupt."""
    try:
        kind = os.readlink(f"/proc/self/fd/{fd}")
    except OSError as e:
        raise p.ProtocolError(errno.EINVAL, f"SET_IRQS: descriptor {fd}: {e}") from e
    if kind != "anon_inode:[eventfd]":
        raise p.ProtocolError(errno.EINVAL, f"SET_IRQS: {kind} is not an eventfd")
    os.set_blocking(fd, False)  # QEMU makes its eventfds non-blocking already


@dataclass
class IrqIndex:
    count: int
    fds: list[int | None] = field(default_factory=list)
    enabled: bool = False
    masked: bool = False  # INTx automask state

    def __post_init__(self) -> None:
        self.fds = [None] * self.count


class IrqTable:
    def __init__(self, counts: dict[int, int]) -> None:
        self.indexes = [IrqIndex(counts.get(i, 0)) for i in range(NUM_IRQ_INDEXES)]
        self.intx_level = False
        self.signals = [0] * NUM_IRQ_INDEXES  # statistics, for tests and benchmarks

    def info_flags(self, index: int) -> int:
        if index == IRQ_INTX:
            return p.IRQ_INFO_EVENTFD | p.IRQ_INFO_MASKABLE | p.IRQ_INFO_AUTOMASKED
        return p.IRQ_INFO_EVENTFD | p.IRQ_INFO_NORESIZE

    def close(self) -> None:
        for idx in self.indexes:
            for i, fd in enumerate(idx.fds):
                if fd is not None:
                    os.close(fd)
                    idx.fds[i] = None
            idx.enabled = False
            idx.masked = False

    def _signal(self, index: int, vector: int) -> bool:
        fd = self.indexes[index].fds[vector]
        if fd is None:
            return False
        try:
            os.eventfd_write(fd, 1)
        except BlockingIOError:
            return False  # the client filled its own counter: its interrupt, its loss
        self.signals[index] += 1
        return True

    # --- what the device calls -------------------------------------------------------------

    def set_intx(self, level: bool) -> None:
        self.intx_level = level
        intx = self.indexes[IRQ_INTX]
        if level and not intx.masked and self._signal(IRQ_INTX, 0):
            intx.masked = True

    def signal_msix(self, vector: int) -> bool:
        msix = self.indexes[IRQ_MSIX]
        if not msix.enabled or not 0 <= vector < msix.count:
            return False
        return self._signal(IRQ_MSIX, vector)

    def msix_enabled(self) -> bool:
        return self.indexes[IRQ_MSIX].enabled

    # --- SET_IRQS from the client ---------------------------------------------------------

    def set_irqs(
        self, flags: int, index: int, start: int, count: int, data: bytes, fds: list[int]
    ) -> None:
        """Apply one SET_IRQS request. It takes `fds` when it returns; on a ProtocolError the
        caller keeps them."""
        if not 0 <= index < NUM_IRQ_INDEXES:
            raise p.ProtocolError(errno.EINVAL, f"SET_IRQS: no IRQ index {index}")
        idx = self.indexes[index]
        dtype = flags & p.IRQ_SET_DATA_MASK
        action = flags & p.IRQ_SET_ACTION_MASK_ALL
        if bin(dtype).count("1") != 1 or bin(action).count("1") != 1:
            raise p.ProtocolError(errno.EINVAL, f"SET_IRQS: bad flags {flags:#x}")
        if start + count > idx.count:
            raise p.ProtocolError(
                errno.EINVAL, f"SET_IRQS: vectors {start}..{start + count} beyond {idx.count}"
            )
        if dtype != p.IRQ_SET_DATA_EVENTFD and fds:
            raise p.ProtocolError(errno.EINVAL, "SET_IRQS: file descriptors without DATA_EVENTFD")

        if action == p.IRQ_SET_ACTION_TRIGGER and dtype == p.IRQ_SET_DATA_EVENTFD:
            # A run of fds assigns them; a run with no fds (QEMU's "-1" entries) clears.
            if fds and len(fds) != count:
                raise p.ProtocolError(errno.EINVAL, f"SET_IRQS: {len(fds)} fds for {count} vectors")
            for new in fds:
                _check_eventfd(new)
            for i in range(count):
                old = idx.fds[start + i]
                if old is not None:
                    os.close(old)
                idx.fds[start + i] = fds[i] if fds else None
            if count:
                idx.enabled = True
            if index == IRQ_INTX and fds:
                idx.masked = False
                self.set_intx(self.intx_level)
            return
        if action == p.IRQ_SET_ACTION_TRIGGER and dtype == p.IRQ_SET_DATA_NONE and count == 0:
            for i, fd in enumerate(idx.fds):  # disable the whole index
                if fd is not None:
                    os.close(fd)
                    idx.fds[i] = None
            idx.enabled = False
            return
        if action == p.IRQ_SET_ACTION_TRIGGER:  # loopback trigger (DATA_NONE or DATA_BOOL)
            if dtype == p.IRQ_SET_DATA_BOOL and len(data) < count:
                raise p.ProtocolError(errno.EINVAL, "SET_IRQS: DATA_BOOL shorter than count")
            for i in range(count):
                if dtype == p.IRQ_SET_DATA_NONE or data[i]:
                    self._signal(index, start + i)
            return
        if fds:
            raise p.ProtocolError(errno.ENOTSUP, "SET_IRQS: eventfd-driven mask/unmask")
        if index != IRQ_INTX:
            return  # MSI/MSI-X masking is emulated by QEMU itself
        if action == p.IRQ_SET_ACTION_MASK:
            idx.masked = True
        else:  # UNMASK: re-deliver a line that is still asserted
            idx.masked = False
            self.set_intx(self.intx_level)
