"""A minimal synchronous vfio-user client: for unit tests and benchmarks, not for QEMU's job.

It speaks the same wire format QEMU does, so tests can drive a device model through its
real transport (probe-like sequences, resets, faults) without a VM.
"""

from __future__ import annotations

import json
import os
import socket
import struct
from dataclasses import dataclass
from pathlib import Path

from . import protocol as p

_pack_header = p.HEADER.pack
_REPLY = int(p.Flags.REPLY)
_ERROR = int(p.Flags.ERROR)
_NO_REPLY = int(p.Flags.NO_REPLY)
_TYPE_MASK = int(p.Flags.TYPE_MASK)
_U32 = struct.Struct("<I")
_RX_SIZE = 64 << 10  # a reply this large arrives in one recvmsg; larger ones take more


class ClientError(Exception):
    def __init__(self, command: str, errno: int) -> None:
        self.errno = errno
        super().__init__(f"{command} failed: {os.strerror(errno)} ({errno})")


@dataclass
class RegionInfo:
    index: int
    flags: int
    size: int
    mmap_areas: list[tuple[int, int]]
    fd: int | None


class Client:
    def __init__(self, path: str | Path, timeout: float = 5.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(str(path))
        p.set_io_timeout(self.sock, timeout)  # after connect: see set_io_timeout for why
        self._next_id = 0
        self._rx = memoryview(bytearray(_RX_SIZE))

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- framing ----------------------------------------------------------------------------

    def send_raw(self, data: bytes, fds: list[int] | None = None) -> None:
        try:
            sent = self.sock.sendmsg([data], [p.fds_ancillary(fds)] if fds else [])
            if sent < len(data):
                self.sock.sendall(data[sent:])  # a stream may take a large message in parts
        except BlockingIOError as e:
            raise TimeoutError("vfio-user server is not reading its socket") from e

    def recv_reply(self) -> tuple[p.Header, bytes, list[int]]:
        fds: list[int] = []
        header, body = self._recv_message(fds)
        return p.Header(*header), body, fds

    def _recv_message(self, fds: list[int]) -> tuple[p.HeaderFields, bytes]:
        """Receive one message: its header fields and its payload.

        One recvmsg takes a whole small reply: the server speaks only when spoken to, so
        nothing of a next message can follow it in the stream.
        """
        rx = self._rx
        try:
            got, anc, _, _ = self.sock.recvmsg_into([rx], p.FDS_SPACE)
            if anc:
                fds.extend(p.fds_from_ancillary(anc))
            while got < p.HEADER_SIZE:
                got += self._recv_into(rx[got:])
            header: p.HeaderFields = p.HEADER.unpack_from(rx)
            size = header[2]
            if size < p.HEADER_SIZE or got > size:
                raise ConnectionError(f"malformed reply: size {size}, {got} bytes received")
            if got == size:
                return header, bytes(rx[p.HEADER_SIZE : size])
            body = bytearray(size - p.HEADER_SIZE)  # a large reply: the rest goes straight in
            view = memoryview(body)
            view[: got - p.HEADER_SIZE] = rx[p.HEADER_SIZE : got]
            got -= p.HEADER_SIZE
            while got < len(body):
                got += self._recv_into(view[got:])
        except BlockingIOError as e:
            raise TimeoutError("no reply from the vfio-user server") from e
        return header, bytes(body)

    def _recv_into(self, buf: memoryview) -> int:
        n = self.sock.recv_into(buf)
        if n == 0:
            raise ConnectionError("server closed the connection")
        return n

    def request(
        self, command: int, payload: bytes = b"", fds: list[int] | None = None, flags: int = 0
    ) -> tuple[bytes, list[int]]:
        self._next_id = msg_id = (self._next_id + 1) & 0xFFFF
        self.send_raw(
            _pack_header(msg_id, command, p.HEADER_SIZE + len(payload), flags, 0) + payload, fds
        )
        if flags & _NO_REPLY:
            return b"", []
        rfds: list[int] = []
        (r_id, r_command, _, r_flags, r_error), body = self._recv_message(rfds)
        if r_id != msg_id or r_command != command or r_flags & _TYPE_MASK != _REPLY:
            raise ConnectionError(
                f"mismatched reply (id {r_id}, command {r_command}, flags {r_flags:#x})"
                f" to message {msg_id}, command {command}"
            )
        if r_flags & _ERROR:
            raise ClientError(p.command_name(command), r_error)
        return body, rfds

    # --- commands ---------------------------------------------------------------------------

    def version(self) -> dict[str, object]:
        caps = (
            json.dumps(
                {
                    "capabilities": {
                        "max_msg_fds": 16,
                        "pgsizes": 4096,
                        "max_data_xfer_size": 1 << 20,
                    }
                }
            ).encode()
            + b"\0"
        )
        body, _ = self.request(p.Command.VERSION, p.VERSION.pack(0, 0) + caps)
        reply: dict[str, object] = json.loads(body[p.VERSION.size : -1])
        return reply

    def dma_map(
        self, iova: int, size: int, fd: int | None, offset: int = 0, writable: bool = True
    ) -> None:
        flags = p.DMA_MAP_FLAG_READ | (p.DMA_MAP_FLAG_WRITE if writable else 0)
        payload = p.DMA_MAP.pack(p.DMA_MAP.size, flags, offset, iova, size)
        self.request(p.Command.DMA_MAP, payload, [fd] if fd is not None else None)

    def dma_unmap(self, iova: int, size: int, all_: bool = False) -> None:
        flags = p.DMA_UNMAP_FLAG_ALL if all_ else 0
        self.request(p.Command.DMA_UNMAP, p.DMA_UNMAP.pack(p.DMA_UNMAP.size, flags, iova, size))

    def device_info(self) -> tuple[int, int, int]:
        body, _ = self.request(p.Command.DEVICE_GET_INFO, p.DEVICE_INFO.pack(16, 0, 0, 0))
        _, flags, nregions, nirqs = p.DEVICE_INFO.unpack(body)
        return flags, nregions, nirqs

    def region_info(self, index: int) -> RegionInfo:
        argsz = p.REGION_INFO.size
        while True:
            payload = p.REGION_INFO.pack(argsz, 0, index, 0, 0, 0) + bytes(argsz - 32)
            body, fds = self.request(p.Command.DEVICE_GET_REGION_INFO, payload)
            need, flags, _, cap_off, size, _ = p.REGION_INFO.unpack_from(body)
            if need <= argsz:
                break
            argsz = need
        areas = []
        if flags & p.REGION_INFO_FLAG_CAPS and cap_off:
            _, _, _ = p.CAP_HEADER.unpack_from(body, cap_off)
            (n, _) = p.SPARSE_MMAP.unpack_from(body, cap_off + p.CAP_HEADER.size)
            base = cap_off + p.CAP_HEADER.size + p.SPARSE_MMAP.size
            areas = [p.SPARSE_AREA.unpack_from(body, base + 16 * i) for i in range(n)]
        return RegionInfo(index, flags, size, [(o, s) for o, s in areas], fds[0] if fds else None)

    def irq_info(self, index: int) -> tuple[int, int]:
        body, _ = self.request(p.Command.DEVICE_GET_IRQ_INFO, p.IRQ_INFO.pack(16, 0, index, 0))
        _, flags, _, count = p.IRQ_INFO.unpack(body)
        return flags, count

    def set_irq_eventfds(self, index: int, start: int, fds: list[int]) -> None:
        flags = p.IRQ_SET_DATA_EVENTFD | p.IRQ_SET_ACTION_TRIGGER
        self.request(
            p.Command.DEVICE_SET_IRQS, p.IRQ_SET.pack(20, flags, index, start, len(fds)), fds
        )

    def disable_irqs(self, index: int) -> None:
        flags = p.IRQ_SET_DATA_NONE | p.IRQ_SET_ACTION_TRIGGER
        self.request(p.Command.DEVICE_SET_IRQS, p.IRQ_SET.pack(20, flags, index, 0, 0))

    def unmask_intx(self) -> None:
        flags = p.IRQ_SET_DATA_NONE | p.IRQ_SET_ACTION_UNMASK
        self.request(p.Command.DEVICE_SET_IRQS, p.IRQ_SET.pack(20, flags, 0, 0, 1))

    def read(self, region: int, offset: int, count: int) -> bytes:
        body, _ = self.request(p.Command.REGION_READ, p.REGION_RW.pack(offset, region, count))
        return body[p.REGION_RW.size :]

    def write(self, region: int, offset: int, data: bytes, posted: bool = False) -> None:
        """posted: sent without waiting for an answer (NO_REPLY), as QEMU posts a write."""
        self.request(
            p.Command.REGION_WRITE,
            p.REGION_RW.pack(offset, region, len(data)) + data,
            flags=_NO_REPLY if posted else 0,
        )

    def read32(self, region: int, offset: int) -> int:
        """A 32-bit read as the CPU sees it (little-endian MMIO)."""
        value: int = _U32.unpack_from(self.read(region, offset, 4))[0]
        return value

    def write32(self, region: int, offset: int, value: int) -> None:
        self.write(region, offset, _U32.pack(value))

    def reset(self) -> None:
        self.request(p.Command.DEVICE_RESET)
