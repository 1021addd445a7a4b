"""vfio-user wire format (docs/interop/vfio-user.rst in QEMU; checked against QEMU 10.2).

Every message starts with a 16-byte little-endian header; the payload structs are the
VFIO ioctl structs of linux/vfio.h, also little-endian. File descriptors travel as
SCM_RIGHTS ancillary data on the same sendmsg as the message's first byte.
"""

from __future__ import annotations

import array
import enum
import os
import socket
import struct
from dataclasses import dataclass

HEADER = struct.Struct("<HHIII")  # id, command, size (header included), flags, error
HEADER_SIZE = HEADER.size
# HEADER unpacked. The per-message paths keep the plain tuple: a Header object per trapped
# MMIO access would cost measurable time (`rig bench`).
HeaderFields = tuple[int, int, int, int, int]

MAX_MSG_FDS = 16  # QEMU refuses more than VFIO_USER_MAX_MAX_FDS
FDS_SPACE = socket.CMSG_SPACE(4 * MAX_MSG_FDS)  # recvmsg's ancillary buffer for them
MAX_DATA_XFER = 1 << 20  # region read/write payload limit we advertise
MAX_MSG_SIZE = MAX_DATA_XFER + 4096  # anything larger is malformed
PAGE_SIZE = 4096


class Command(enum.IntEnum):
    VERSION = 1
    DMA_MAP = 2
    DMA_UNMAP = 3
    DEVICE_GET_INFO = 4
    DEVICE_GET_REGION_INFO = 5
    DEVICE_GET_REGION_IO_FDS = 6
    DEVICE_GET_IRQ_INFO = 7
    DEVICE_SET_IRQS = 8
    REGION_READ = 9
    REGION_WRITE = 10
    DMA_READ = 11
    DMA_WRITE = 12
    DEVICE_RESET = 13
    DIRTY_PAGES = 14
    REGION_WRITE_MULTI = 15


class Flags(enum.IntEnum):
    # Bit flags, but an IntEnum: IntFlag arithmetic builds a new enum member on every `&`,
    # which cost several microseconds per message on the trapped-MMIO path (`rig bench`).
    REPLY = 0x1
    TYPE_MASK = 0xF
    NO_REPLY = 0x10
    ERROR = 0x20


@dataclass(frozen=True)
class Header:
    """A header as an object, for tests and tools."""

    msg_id: int
    command: int
    size: int
    flags: int
    error: int

    def pack(self) -> bytes:
        return HEADER.pack(self.msg_id, self.command, self.size, self.flags, self.error)


# Payload structs (after the header).
VERSION = struct.Struct("<HH")  # major, minor, then a NUL-terminated JSON string
DMA_MAP = struct.Struct("<IIQQQ")  # argsz, flags, offset, iova, size
DMA_UNMAP = struct.Struct("<IIQQ")  # argsz, flags, iova, size
DEVICE_INFO = struct.Struct("<IIII")  # argsz, flags, num_regions, num_irqs
REGION_INFO = struct.Struct("<IIIIQQ")  # argsz, flags, index, cap_offset, size, offset
CAP_HEADER = struct.Struct("<HHI")  # id, version, next
SPARSE_MMAP = struct.Struct("<II")  # nr_areas, reserved
SPARSE_AREA = struct.Struct("<QQ")  # offset, size
IRQ_INFO = struct.Struct("<IIII")  # argsz, flags, index, count
IRQ_SET = struct.Struct("<IIIII")  # argsz, flags, index, start, count
REGION_RW = struct.Struct("<QII")  # offset, region, count, then data
WRITE_ONE = struct.Struct("<QII8s")  # one REGION_WRITE_MULTI record
WRITE_MULTI_COUNT = struct.Struct("<Q")

# linux/vfio.h flag values.
DEVICE_FLAGS_RESET = 1 << 0
DEVICE_FLAGS_PCI = 1 << 1
DMA_MAP_FLAG_READ = 1 << 0
DMA_MAP_FLAG_WRITE = 1 << 1
DMA_UNMAP_FLAG_ALL = 1 << 1
REGION_INFO_FLAG_READ = 1 << 0
REGION_INFO_FLAG_WRITE = 1 << 1
REGION_INFO_FLAG_MMAP = 1 << 2
REGION_INFO_FLAG_CAPS = 1 << 3
REGION_INFO_CAP_SPARSE_MMAP = 1
IRQ_INFO_EVENTFD = 1 << 0
IRQ_INFO_MASKABLE = 1 << 1
IRQ_INFO_AUTOMASKED = 1 << 2
IRQ_INFO_NORESIZE = 1 << 3
IRQ_SET_DATA_NONE = 1 << 0
IRQ_SET_DATA_BOOL = 1 << 1
IRQ_SET_DATA_EVENTFD = 1 << 2
IRQ_SET_DATA_MASK = IRQ_SET_DATA_NONE | IRQ_SET_DATA_BOOL | IRQ_SET_DATA_EVENTFD
IRQ_SET_ACTION_MASK = 1 << 3
IRQ_SET_ACTION_UNMASK = 1 << 4
IRQ_SET_ACTION_TRIGGER = 1 << 5
IRQ_SET_ACTION_MASK_ALL = IRQ_SET_ACTION_MASK | IRQ_SET_ACTION_UNMASK | IRQ_SET_ACTION_TRIGGER


class ProtocolError(Exception):
    """A malformed message: answered with an error reply carrying `errno`."""

    def __init__(self, errno: int, message: str) -> None:
        self.errno = errno
        super().__init__(message)


_COMMAND_NAMES = {c.value: c.name for c in Command}  # Command(n) is slow, and runs per message


def command_name(command: int) -> str:
    return _COMMAND_NAMES.get(command) or f"command {command}"


def fds_ancillary(fds: list[int]) -> tuple[int, int, bytes]:
    """The SCM_RIGHTS ancillary item that passes `fds` with a sendmsg."""
    return (socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())


def fds_from_ancillary(anc: list[tuple[int, int, bytes]]) -> list[int]:
    """The file descriptors a recvmsg received as SCM_RIGHTS."""
    fds = array.array("i")
    for level, kind, data in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    return fds.tolist()


def close_fds(fds: list[int]) -> None:
    """Close descriptors received with a message that will not use them."""
    for fd in fds:
        os.close(fd)


def set_io_timeout(sock: socket.socket, seconds: float) -> None:
    """Bound a blocking socket's sends and receives in the kernel (SO_RCVTIMEO/SO_SNDTIMEO).

    Not `sock.settimeout()`: that makes CPython poll() before every send and recv, doubling
    the system calls of each trapped MMIO access. An expired kernel timeout surfaces as
    BlockingIOError.
    """
    sock.setblocking(True)
    tv = struct.pack("@ll", int(seconds), int(seconds % 1 * 1_000_000))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)
