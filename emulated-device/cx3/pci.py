"""PCI configuration space of the emulated ConnectX-3 (15b3:1003).

256 bytes, one capability: MSI-X at 0x9c with its table and PBA in BAR2, so that every BAR0 byte
(which crdump reads) belongs to the model. QEMU emulates BAR sizing and the whole MSI-X
capability itself; the BAR dwords here only carry type bits. Writes are filtered through a
per-byte writable mask, like QEMU's own config emulation.

The CR-space gateway: a ConnectX-3 also reaches BAR0 through config space, an address dword at
0x58 and a data dword at 0x5c (mstflint's mtcr_ul "pciconf" access: write the CR-space address,
then read or write the data; both little-endian, as PCI registers are). mstflint takes this
path for 15b3:1003 when it cannot map BAR0 (resource0), and probes it whenever it opens the card.
"""

from __future__ import annotations

import struct
from typing import Protocol

from vfio_user import AccessError

SIZE = 256

VENDOR_ID = 0x15B3
DEVICE_ID = 0x1003  # ConnectX-3
SUBSYSTEM_ID = 0x0006
CLASS_ETHERNET = 0x020000

COMMAND = 0x04
STATUS = 0x06
CMD_MEMORY = 1 << 1
CMD_MASTER = 1 << 2
CMD_INTX_DISABLE = 1 << 10
STATUS_CAP_LIST = 1 << 4

BAR_MEM64 = 0x4
BAR_PREFETCH = 0x8

MSIX_CAP = 0x9C
MSIX_VECTORS = 128
MSIX_BAR = 2
MSIX_TABLE_OFFSET = 0x100000  # in BAR2, after the 1 MiB of UAR pages
MSIX_PBA_OFFSET = 0x101000
MSIX_CTRL_ENABLE = 1 << 15
MSIX_CTRL_MASKALL = 1 << 14

GATEWAY_ADDRESS = 0x58  # PCICONF_ADDR_OFF (mstflint mtcr_ul)
GATEWAY_DATA = 0x5C  # PCICONF_DATA_OFF
GATEWAY_BAD_ACCESS = 0xBADACCE5  # what the card reads where no CR-space is


class CrAccess(Protocol):
    """BAR0 as the gateway reaches it: the dword value at an offset, a guest-like write."""

    size: int

    def word(self, offset: int) -> int: ...

    def write(self, offset: int, data: bytes) -> None: ...


def _initial_header() -> tuple[bytearray, bytearray]:
    cfg = bytearray(SIZE)
    wmask = bytearray(SIZE)
    struct.pack_into("<HH", cfg, 0x00, VENDOR_ID, DEVICE_ID)
    struct.pack_into("<H", cfg, STATUS, STATUS_CAP_LIST)
    cfg[0x08] = 0  # revision
    cfg[0x09:0x0C] = CLASS_ETHERNET.to_bytes(3, "little")
    struct.pack_into("<I", cfg, 0x10, BAR_MEM64)  # BAR0: 1 MiB CR-space
    struct.pack_into("<I", cfg, 0x18, BAR_MEM64 | BAR_PREFETCH)  # BAR2: UAR + MSI-X
    struct.pack_into("<HH", cfg, 0x2C, VENDOR_ID, SUBSYSTEM_ID)
    cfg[0x34] = MSIX_CAP
    cfg[0x3D] = 1  # INTA
    cfg[MSIX_CAP] = 0x11  # MSI-X capability ID, last in the list
    struct.pack_into("<H", cfg, MSIX_CAP + 2, MSIX_VECTORS - 1)
    struct.pack_into("<I", cfg, MSIX_CAP + 4, MSIX_TABLE_OFFSET | MSIX_BAR)
    struct.pack_into("<I", cfg, MSIX_CAP + 8, MSIX_PBA_OFFSET | MSIX_BAR)

    struct.pack_into("<H", wmask, COMMAND, 0x0547)  # IO, MEM, MASTER, PARITY, SERR, INTX_DISABLE
    wmask[0x0C] = 0xFF  # cache line size
    wmask[0x0D] = 0xFF  # latency timer (pcibios_set_master writes it)
    wmask[0x3C] = 0xFF  # interrupt line
    struct.pack_into("<H", wmask, MSIX_CAP + 2, MSIX_CTRL_ENABLE | MSIX_CTRL_MASKALL)
    struct.pack_into("<I", wmask, GATEWAY_ADDRESS, 0xFFFFFFFF)
    return cfg, wmask


class PciConfig:
    """The 256-byte config header; tracks COMMAND so the model knows MEM/BME/INTx state, and
    serves the CR-space gateway over `cr`."""

    def __init__(self, cr: CrAccess) -> None:
        self._cfg, self._wmask = _initial_header()
        self._cr = cr
        self.gateway_reads = 0  # CR-space dwords read through the gateway (mstflint's pciconf)

    def read(self, offset: int, size: int) -> bytes:
        self._check(offset, size)
        if offset < GATEWAY_DATA + 4 and offset + size > GATEWAY_DATA:
            struct.pack_into("<I", self._cfg, GATEWAY_DATA, self._gateway_read())
        return bytes(self._cfg[offset : offset + size])

    def write(self, offset: int, data: bytes) -> None:
        self._check(offset, len(data))
        if offset == GATEWAY_DATA and len(data) == 4:
            self._gateway_write(int.from_bytes(data, "little"))
            return
        for i, byte in enumerate(data):
            mask = self._wmask[offset + i]
            old = self._cfg[offset + i]
            self._cfg[offset + i] = (old & ~mask) | (byte & mask)

    @property
    def gateway_address(self) -> int:
        value: int = struct.unpack_from("<I", self._cfg, GATEWAY_ADDRESS)[0]
        return value

    def _gateway_read(self) -> int:
        self.gateway_reads += 1
        address = self.gateway_address
        if address % 4 or address + 4 > self._cr.size:
            return GATEWAY_BAD_ACCESS
        return self._cr.word(address)

    def _gateway_write(self, value: int) -> None:
        address = self.gateway_address
        if address % 4 == 0 and address + 4 <= self._cr.size:  # else dropped, as the card does
            self._cr.write(address, value.to_bytes(4, "big"))

    @property
    def command(self) -> int:
        value: int = struct.unpack_from("<H", self._cfg, COMMAND)[0]
        return value

    @property
    def bus_master(self) -> bool:
        return bool(self.command & CMD_MASTER)

    @property
    def intx_disabled(self) -> bool:
        return bool(self.command & CMD_INTX_DISABLE)

    @staticmethod
    def _check(offset: int, size: int) -> None:
        # Any length: QEMU reads the whole header in one request when it realizes the device.
        if size <= 0 or offset < 0 or offset + size > SIZE:
            raise AccessError(f"config access of {size} bytes at {offset:#x} not supported")
