"""What a device model provides to the transport, and what the transport provides back.

Modelled on libvfio-user: regions with read/write callbacks (optionally backed by a file
descriptor whose "sparse mmap" areas the client maps straight into the guest), a number of
interrupts per IRQ index, a reset hook, and a context through which the device reaches guest
memory (DMA) and raises interrupts.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

# VFIO PCI region indexes (linux/vfio.h).
BAR0_REGION = 0
BAR2_REGION = 2
CONFIG_REGION = 7
NUM_REGIONS = 9  # BAR0-5, ROM, CONFIG, VGA

# VFIO PCI IRQ indexes.
IRQ_INTX = 0
IRQ_MSI = 1
IRQ_MSIX = 2
IRQ_ERR = 3
IRQ_REQ = 4
NUM_IRQ_INDEXES = 5


class AccessError(Exception):
    """A region access the device refuses (outside the region, wrong width, ...)."""


class DmaError(Exception):
    """A DMA access to guest memory the client never mapped (or mapped without an fd)."""


ReadFn = Callable[[int, int], bytes]
WriteFn = Callable[[int, bytes], None]


@dataclass
class Region:
    """One device region.

    `read(offset, size)` / `write(offset, data)` serve trapped accesses; offsets are relative
    to the region and already checked to lie inside it. If `fd` is set, the listed
    `mmap_areas` ((offset, size) pairs, page aligned) are offered to the client for direct
    mapping: guest accesses there never reach the callbacks.
    """

    size: int
    read: ReadFn | None = None
    write: WriteFn | None = None
    fd: int | None = None
    mmap_areas: Sequence[tuple[int, int]] = field(default_factory=tuple)

    @property
    def readable(self) -> bool:
        return self.read is not None

    @property
    def writable(self) -> bool:
        return self.write is not None


class DeviceContext(Protocol):
    """Services the transport gives a device."""

    def dma_read(self, addr: int, size: int) -> bytes:
        """Read guest memory at bus address `addr`; raises DmaError if unmapped."""
        ...

    def dma_write(self, addr: int, data: bytes) -> None:
        """Write guest memory at bus address `addr`; raises DmaError if unmapped."""
        ...

    def set_intx(self, level: bool) -> None:
        """Drive the INTx line (the transport handles QEMU's automasking)."""
        ...

    def signal_msix(self, vector: int) -> bool:
        """Fire an MSI-X vector; False if the client has not enabled it."""
        ...

    def msix_enabled(self) -> bool:
        """Whether the client has MSI-X vectors set up (the guest enabled MSI-X)."""
        ...

    def defer(self, work: Callable[[], bool]) -> None:
        """Background work, the effect of a posted write (a doorbell): the transport answers
        the write at once and calls `work` between later messages, a step at a time, until it
        returns False. Items take turns, so a long one delays the vCPU by one step at most."""
        ...

    def log(self, msg: str) -> None:
        """Record a diagnostic line (bad input, unusual requests)."""
        ...


class Device(abc.ABC):
    """A PCI device model served over vfio-user."""

    #: Regions by VFIO region index; CONFIG_REGION must be present.
    regions: dict[int, Region]
    #: Number of interrupts per VFIO IRQ index (IRQ_INTX, IRQ_MSI, IRQ_MSIX, ...).
    irq_counts: dict[int, int]

    def attach(self, ctx: DeviceContext) -> None:  # noqa: B027 - optional hook
        """Called once the transport is ready; keep `ctx` for DMA and interrupts."""

    @abc.abstractmethod
    def reset(self) -> None:
        """A device reset requested by the client (VFIO_USER_DEVICE_RESET)."""

    def dma_unmapped(self, addr: int, size: int) -> None:  # noqa: B027 - optional hook
        """The client removed a DMA window; stop using addresses inside it."""
