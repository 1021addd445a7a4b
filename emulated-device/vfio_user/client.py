"""A minimal synchronous vfio-user client: for unit tests and benchmarks, not for QEMU's job.

It speaks the same wire format QEMU does, so tests can drive a device model through its
real transport (probe-like sequences, resets, faults) without a VM.
"""

from __future__ import annotations

import array
import json
import os
import socket
import struct
from dataclasses import dataclass
from pathlib import Path

from . import protocol as p


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
        self._next_id = 0

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- framing ----------------------------------------------------------------------------

    def send_raw(self, data: bytes, fds: list[int] | None = None) -> None:
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
        sent = self.sock.sendmsg([data], anc)
        if sent < len(data):
            self.sock.sendall(data[sent:])  # a stream may take a large message in parts

    def recv_reply(self) -> tuple[p.Header, bytes, list[int]]:
        fds: list[int] = []
        raw, anc, _, _ = self.sock.recvmsg(p.HEADER_SIZE, socket.CMSG_SPACE(4 * p.MAX_MSG_FDS))
        for _, _, data in anc:
            a = array.array("i")
            a.frombytes(data[: len(data) - len(data) % 4])
            fds.extend(a)
        while len(raw) < p.HEADER_SIZE:
            raw += self._recv(p.HEADER_SIZE - len(raw))
        hdr = p.Header.unpack(raw)
        body = b""
        while len(body) < hdr.size - p.HEADER_SIZE:
            body += self._recv(hdr.size - p.HEADER_SIZE - len(body))
        return hdr, body, fds

    def _recv(self, n: int) -> bytes:
        chunk = self.sock.recv(n)
        if not chunk:
            raise ConnectionError("server closed the connection")
        return chunk

    def request(
        self, command: int, payload: bytes = b"", fds: list[int] | None = None, flags: int = 0
    ) -> tuple[bytes, list[int]]:
        self._next_id = (self._next_id + 1) & 0xFFFF
        hdr = p.Header(self._next_id, command, p.HEADER_SIZE + len(payload), flags, 0)
        self.send_raw(hdr.pack() + payload, fds)
        if flags & p.Flags.NO_REPLY:
            return b"", []
        reply, body, rfds = self.recv_reply()
        if reply.msg_id != hdr.msg_id or reply.command != command or not reply.is_reply:
            raise ConnectionError(f"mismatched reply {reply} to {hdr}")
        if reply.flags & p.Flags.ERROR:
            raise ClientError(p.command_name(command), reply.error)
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

    def write(self, region: int, offset: int, data: bytes) -> None:
        self.request(p.Command.REGION_WRITE, p.REGION_RW.pack(offset, region, len(data)) + data)

    def read32(self, region: int, offset: int) -> int:
        """A 32-bit read as the CPU sees it (little-endian MMIO)."""
        value: int = struct.unpack("<I", self.read(region, offset, 4))[0]
        return value

    def write32(self, region: int, offset: int, value: int) -> None:
        self.write(region, offset, struct.pack("<I", value))

    def reset(self) -> None:
        self.request(p.Command.DEVICE_RESET)
