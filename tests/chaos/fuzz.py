"""A seeded generator of hostile vfio-user traffic, and the client side that sends it.

Each step is one or more `Shot`s: random commands and payloads, structs with edge-case fields
and cut short, unknown commands, descriptors of every kind attached, huge lengths, region
accesses around the regions' ends, firmware commands whose mailboxes point into DMA windows
(some of which the client then shrinks), oversized messages, and now and then a message that
breaks the stream, after which the client hangs up and connects again.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from cx3 import hcr, layout
from cx3.opcodes import Opcode
from vfio_user import protocol as p
from vfio_user.device import BAR0_REGION, BAR2_REGION, CONFIG_REGION

PAGE = 4096
PROBE_ID = 0xFFFF  # the probe's message id; the fuzz never uses it
DMA_BASE = 0x1_0000_0000
DMA_SLOTS = 16  # windows land in one of these page-sized slots, so they overlap and get replaced
REGION_SIZES = {CONFIG_REGION: 256, BAR0_REGION: layout.SIZE, BAR2_REGION: 2 << 20}
EDGE_COUNTS = (0, 1, 2, 3, 4, 8, 64, PAGE, p.MAX_DATA_XFER, p.MAX_DATA_XFER + 1, 0xFFFFFFFF)
U64_EDGES = (0, 1, PAGE - 1, PAGE, 1 << 32, (1 << 63) - 1, 1 << 63, (1 << 64) - 1)
OVERSIZED = p.MAX_MSG_SIZE + 1
OPCODES = list(Opcode)


@dataclass
class Shot:
    """One message on the wire: its bytes and the descriptors that ride on them (ours, closed
    once sent). `breaks`: the stream cannot be resynchronised after it; the client hangs up."""

    kind: str
    data: bytes
    fds: list[int] = field(default_factory=list)
    breaks: bool = False


class Fuzzer:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self._next_id = 0
        self._toggle = 1
        # (iova, memfd) of windows we asked to map, kept to take the memory back later.
        self.mapped: list[tuple[int, int]] = []
        kinds: list[tuple[str, int, Callable[[], list[Shot]]]] = [
            ("random", 30, self._random),
            ("struct", 30, self._struct),
            ("fds", 12, self._with_fds),
            ("region", 20, self._region_edge),
            ("firmware", 6, self._firmware),
            ("shrink", 1, self._shrink),
            ("oversized", 1, self._oversized),
            ("breaker", 1, self._breaker),
        ]
        self._makers = [make for _, _, make in kinds]
        self._weights = [w for _, w, _ in kinds]

    def step(self) -> list[Shot]:
        (make,) = self.rng.choices(self._makers, self._weights)
        return make()

    def close(self) -> None:
        for _, fd in self.mapped:
            os.close(fd)
        self.mapped.clear()

    # --- building blocks ------------------------------------------------------------------

    def _id(self) -> int:
        self._next_id = (self._next_id + 1) % PROBE_ID
        return self._next_id

    def _flags(self) -> int:
        r = self.rng.random()
        if r < 0.85:
            return 0
        if r < 0.92:
            return int(p.Flags.NO_REPLY)
        return self.rng.choice([int(p.Flags.REPLY), int(p.Flags.ERROR), self.rng.getrandbits(32)])

    def _message(
        self, kind: str, command: int, payload: bytes, fds: list[int] | None = None
    ) -> Shot:
        header = p.HEADER.pack(self._id(), command, p.HEADER_SIZE + len(payload), self._flags(), 0)
        return Shot(kind, header + payload, fds or [])

    def _bytes(self, most: int = 96) -> bytes:
        return self.rng.randbytes(min(int(self.rng.expovariate(1 / 24)), most))

    def _u64(self) -> int:
        return self.rng.choice([*U64_EDGES, self.rng.getrandbits(64)])

    def _count(self) -> int:
        return self.rng.choice([*EDGE_COUNTS, self.rng.getrandbits(32)])

    def _cut(self, payload: bytes) -> bytes:
        """Now and then a struct shorter than it must be."""
        if payload and self.rng.random() < 0.2:
            return payload[: self.rng.randrange(len(payload))]
        return payload

    def _iova(self) -> int:
        return DMA_BASE + self.rng.randrange(DMA_SLOTS) * PAGE

    # --- kinds ----------------------------------------------------------------------------

    def _random(self) -> list[Shot]:
        """Any command number, any payload."""
        r = self.rng.random()
        command = self.rng.randrange(1, 16) if r < 0.8 else self.rng.getrandbits(16)
        return [self._message("random", command, self._bytes())]

    def _struct(self, fds: list[int] | None = None) -> list[Shot]:
        """A known command with a well-formed struct of edge-case fields (sometimes cut)."""
        rng = self.rng
        c = p.Command
        choice = rng.randrange(10)
        if choice == 0:
            caps = rng.choice([b"{}\0", b"{\0", b"{}", b'{"capabilities":{}}\0', self._bytes()])
            command, payload = c.VERSION, p.VERSION.pack(rng.choice([0, 0, 1]), 0) + caps
        elif choice == 1:
            flags = rng.choice([0, 1, 2, 3, rng.getrandbits(32)])
            size = rng.choice([0, PAGE, 2 * PAGE, PAGE - 1, self._u64()])
            offset = rng.choice([0, 0, PAGE, self._u64()])
            payload = p.DMA_MAP.pack(32, flags, offset, self._iova(), size)
            command = c.DMA_MAP
        elif choice == 2:
            flags = rng.choice([0, 0, p.DMA_UNMAP_FLAG_ALL, rng.getrandbits(32)])
            payload = p.DMA_UNMAP.pack(24, flags, self._iova(), rng.choice([PAGE, self._u64()]))
            command = c.DMA_UNMAP
        elif choice == 3:
            command, payload = (
                c.DEVICE_GET_INFO,
                p.DEVICE_INFO.pack(rng.choice([0, 16, 4096]), 0, 0, 0),
            )
        elif choice == 4:
            argsz = rng.choice([0, 16, 32, 64, 256, rng.getrandbits(32)])
            index = rng.randrange(-1, 11) & 0xFFFFFFFF
            payload = p.REGION_INFO.pack(argsz, 0, index, 0, 0, 0)
            command = c.DEVICE_GET_REGION_INFO
        elif choice == 5:
            index = rng.randrange(-1, 7) & 0xFFFFFFFF
            command, payload = c.DEVICE_GET_IRQ_INFO, p.IRQ_INFO.pack(16, 0, index, 0)
        elif choice == 6:
            flags = rng.choice(
                [
                    p.IRQ_SET_DATA_EVENTFD | p.IRQ_SET_ACTION_TRIGGER,
                    p.IRQ_SET_DATA_NONE | p.IRQ_SET_ACTION_TRIGGER,
                    p.IRQ_SET_DATA_BOOL | p.IRQ_SET_ACTION_TRIGGER,
                    p.IRQ_SET_DATA_NONE | p.IRQ_SET_ACTION_UNMASK,
                    p.IRQ_SET_DATA_NONE | p.IRQ_SET_ACTION_MASK,
                    rng.getrandbits(32),
                ]
            )
            index = rng.randrange(0, 6)
            start = rng.choice([0, 1, 63, 64, rng.getrandbits(32)])
            count = len(fds) if fds else rng.choice([0, 1, 2, 64, rng.getrandbits(32)])
            payload = p.IRQ_SET.pack(20, flags, index, start, count) + self._bytes(16)
            command = c.DEVICE_SET_IRQS
        elif choice == 7:
            n = rng.choice([0, 1, 2, 8, rng.getrandbits(64)])
            records = b"".join(
                p.WRITE_ONE.pack(*self._access(), rng.randbytes(8)) for _ in range(rng.randrange(3))
            )
            command, payload = c.REGION_WRITE_MULTI, p.WRITE_MULTI_COUNT.pack(n) + records
        elif choice == 8:
            command, payload = c.DEVICE_RESET, b""
        else:
            command = rng.choice(
                [c.DEVICE_GET_REGION_IO_FDS, c.DMA_READ, c.DMA_WRITE, c.DIRTY_PAGES]
            )
            payload = self._bytes()
        return [self._message("struct", command, self._cut(payload), fds)]

    def _access(self) -> tuple[int, int, int]:
        """(offset, region, count) around a region's end, or anywhere."""
        rng = self.rng
        region = rng.choice([*REGION_SIZES, rng.randrange(10)])
        size = REGION_SIZES.get(region, PAGE)
        count = rng.choice([1, 2, 4, 8, 8, self._count()])
        offset = rng.choice(
            [size - count, size - count + 1, size, 0, rng.randrange(size), self._u64()]
        )
        return offset & ((1 << 64) - 1), region, count & 0xFFFFFFFF

    def _region_edge(self) -> list[Shot]:
        """Reads and writes at the regions' edges (in range or just past)."""
        offset, region, count = self._access()
        if self.rng.random() < 0.5:
            payload = p.REGION_RW.pack(offset, region, count)
            return [self._message("region", p.Command.REGION_READ, payload)]
        data = self.rng.randbytes(
            min(count, 64) if self.rng.random() < 0.9 else self.rng.randrange(16)
        )
        payload = p.REGION_RW.pack(offset, region, count) + data
        return [self._message("region", p.Command.REGION_WRITE, payload)]

    def _fd(self) -> int:
        """One descriptor of a random kind."""
        kind = self.rng.randrange(6)
        if kind <= 1:
            return self._memfd()
        if kind == 2:
            return os.eventfd(0)
        if kind == 3:
            r, w = os.pipe()
            os.close(r)
            return w
        if kind == 4:
            a, b = socket.socketpair()
            b.close()
            return a.detach()
        return os.open(os.devnull, os.O_RDONLY)

    def _memfd(self) -> int:
        """Two pages of "guest RAM", sealed against shrinking half of the time (as QEMU's
        memory-backend-memfd makes it)."""
        fd = os.memfd_create("fuzz-ram", os.MFD_ALLOW_SEALING)
        os.ftruncate(fd, 2 * PAGE)
        if self.rng.random() < 0.5:
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK)
        return fd

    def _with_fds(self) -> list[Shot]:
        """A DMA_MAP of memory as QEMU sends them (now and then not quite), or a message of any
        kind with one to three descriptors of any kind."""
        r = self.rng.random()
        if r < 0.5:
            fd, iova = self._memfd(), self._iova()
            size = self.rng.choice([PAGE, 2 * PAGE, 2 * PAGE, 3 * PAGE])
            payload = self._cut(p.DMA_MAP.pack(32, 3, self.rng.choice([0, 0, PAGE]), iova, size))
            if len(payload) == p.DMA_MAP.size:  # keep a handle: we may take it back later
                self.mapped.append((iova, os.dup(fd)))
                while len(self.mapped) > 8:
                    os.close(self.mapped.pop(0)[1])
            return [self._message("fds", p.Command.DMA_MAP, payload, [fd])]
        fds = [self._fd() for _ in range(self.rng.choice([1, 1, 1, 2, 3]))]
        if r < 0.8:
            return self._struct(fds)
        shots = self._random()
        shots[0].fds = fds
        return shots

    def _shrink(self) -> list[Shot]:
        """The client takes back memory it mapped, then a firmware command DMAs there: the
        model must refuse the access, not die of it (a sealed memfd refuses to shrink)."""
        if not self.mapped:
            return self._firmware()
        iova, fd = self.rng.choice(self.mapped)
        with contextlib.suppress(PermissionError):
            os.ftruncate(fd, self.rng.choice([0, PAGE]))
        return self._firmware(out_param=iova + self.rng.choice([0, PAGE]), opcode=Opcode.QUERY_FW)

    def _firmware(self, out_param: int | None = None, opcode: int | None = None) -> list[Shot]:
        """A firmware command through the HCR, its mailboxes in the DMA slots, bus master on."""
        rng = self.rng
        shots = []
        if rng.random() < 0.3 or out_param is not None:
            payload = p.REGION_RW.pack(4, CONFIG_REGION, 2) + struct.pack("<H", 0x0006)
            shots.append(self._message("firmware", p.Command.REGION_WRITE, payload))
        in_param = self._iova() if rng.random() < 0.8 else self._u64()
        if out_param is None:
            out_param = self._iova() if rng.random() < 0.8 else self._u64()
        if opcode is None:
            opcode = rng.choice(OPCODES) if rng.random() < 0.7 else rng.randrange(0x1000)
        go = 1 << 23 | self._toggle << 21 | rng.randrange(16) << 12 | opcode
        self._toggle ^= 1
        words = (
            in_param >> 32,
            in_param & 0xFFFFFFFF,
            rng.getrandbits(32) if rng.random() < 0.5 else 0,
            out_param >> 32,
            out_param & 0xFFFFFFFF,
            0xFFFF << 16,
            go,
        )
        for i, word in enumerate(words):
            offset = layout.HCR_OFFSET + (hcr.STATUS if i == 6 else 4 * i)
            payload = p.REGION_RW.pack(offset, BAR0_REGION, 4) + word.to_bytes(4, "big")
            shots.append(self._message("firmware", p.Command.REGION_WRITE, payload))
        return shots

    def _oversized(self) -> list[Shot]:
        """Larger than any message may be, but not absurd: drained and refused."""
        size = OVERSIZED + self.rng.randrange(8192)
        header = p.HEADER.pack(self._id(), p.Command.REGION_WRITE, size, 0, 0)
        return [Shot("oversized", header + bytes(size - p.HEADER_SIZE))]

    def _breaker(self) -> list[Shot]:
        """Something after which the stream cannot be trusted: the client hangs up after it."""
        rng = self.rng
        choice = rng.randrange(5)
        msg_id = self._id()
        if choice == 0:  # a header smaller than a header
            data = p.HEADER.pack(msg_id, p.Command.VERSION, rng.randrange(16), 0, 0)
        elif choice == 1:  # absurdly large
            data = p.HEADER.pack(msg_id, p.Command.REGION_WRITE, 0xFFFFFFFF, 0, 0)
        elif choice == 2:  # half a header
            data = p.HEADER.pack(msg_id, p.Command.VERSION, 32, 0, 0)[: rng.randrange(1, 16)]
        elif choice == 3:  # a message that says more than the client sends before it goes
            data = p.HEADER.pack(msg_id, p.Command.REGION_WRITE, 64, 0, 0) + bytes(8)
        else:  # pure noise
            data = rng.randbytes(rng.randrange(1, 64))
        fds = [self._fd()] if rng.random() < 0.3 else []
        return [Shot("breaker", data, fds, breaks=True)]


def probe() -> bytes:
    """The check after each step: config space's first dword (vendor and device id)."""
    payload = p.REGION_RW.pack(0, CONFIG_REGION, 4)
    return p.HEADER.pack(PROBE_ID, p.Command.REGION_READ, p.HEADER_SIZE + 16, 0, 0) + payload


class ReplyStream:
    """The replies on a vfio-user stream, one at a time; descriptors that come are closed."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buf = bytearray()

    def next(self) -> tuple[p.HeaderFields, bytes]:
        """The next reply; ConnectionError if the server hung up first."""
        while True:
            if len(self._buf) >= p.HEADER_SIZE:
                header: p.HeaderFields = p.HEADER.unpack_from(self._buf)
                size = header[2]
                if size < p.HEADER_SIZE:
                    raise AssertionError(f"malformed reply header {header}")
                if len(self._buf) >= size:
                    body = bytes(self._buf[p.HEADER_SIZE : size])
                    del self._buf[:size]
                    return header, body
            data, anc, _, _ = self._sock.recvmsg(1 << 20, p.FDS_SPACE)
            p.close_fds(p.fds_from_ancillary(anc))
            if not data:
                raise ConnectionError("the server hung up")
            self._buf += data
