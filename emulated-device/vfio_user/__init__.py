"""A small vfio-user server library: a device is regions with callbacks, IRQs and DMA.

The transport (`server.py`) knows nothing about any particular device; a device model
subclasses `Device` and describes itself with `Region`s and IRQ counts.
"""

from .device import (
    CONFIG_REGION,
    IRQ_ERR,
    IRQ_INTX,
    IRQ_MSI,
    IRQ_MSIX,
    IRQ_REQ,
    AccessError,
    Device,
    DeviceContext,
    DmaError,
    Region,
)

__all__ = [
    "CONFIG_REGION",
    "IRQ_ERR",
    "IRQ_INTX",
    "IRQ_MSI",
    "IRQ_MSIX",
    "IRQ_REQ",
    "AccessError",
    "Device",
    "DeviceContext",
    "DmaError",
    "Region",
]
