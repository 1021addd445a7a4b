"""The vfio-user server: one listening socket, one client (QEMU) at a time.

It validates every message, answers malformed ones with an error reply naming the problem,
and never lets a device callback's exception escape: a vCPU in QEMU is waiting, holding the
global lock, and a late or missing reply desynchronises the stream for good.

A hostile or broken client must not take the process down or hold it up: a refused message's
descriptors are closed, and a client that does not take its replies keeps them queued (and
gets nothing more read) while the loop serves everyone else.
"""

from __future__ import annotations

import collections
import errno
import json
import selectors
import socket
import struct
import sys
from collections.abc import Callable
from pathlib import Path

from . import protocol as p
from .device import CONFIG_REGION, NUM_IRQ_INDEXES, NUM_REGIONS, Device, DmaError, Region
from .dma import DmaSpace
from .framing import Disconnected, Message, MessageReader
from .irq import IrqTable
from .listener import Listener

DRAIN_LIMIT = 64 << 20  # oversized messages up to this are skipped, beyond it we hang up

_pack_header = p.HEADER.pack
_REPLY = int(p.Flags.REPLY)
_ERROR = int(p.Flags.ERROR)
_NO_REPLY = int(p.Flags.NO_REPLY)
_TYPE_MASK = int(p.Flags.TYPE_MASK)
# The only requests that may carry file descriptors (memory to map, eventfds to signal).
_TAKES_FDS = frozenset({p.Command.DMA_MAP, p.Command.DEVICE_SET_IRQS})

Handler = Callable[[bytes, list[int]], tuple[bytes, list[int]]]


def _stderr_log(msg: str) -> None:
    print(f"vfio-user: {msg}", file=sys.stderr, flush=True)


class Server:
    """Serve `device` on a unix socket at `path`; also the device's DeviceContext."""

    def __init__(
        self,
        device: Device,
        path: str | Path,
        log: Callable[[str], None] = _stderr_log,
        inline_work: bool = False,
    ) -> None:
        """`inline_work`: a write's background work runs to its end before the write is
        answered, not between later messages: a client whose writes wait for their answer
        (no posted writes) sees it done when its write returns. QEMU's vCPU, on an icount
        clock, spends no guest time on it then (rig.vm.clock's warp)."""
        if CONFIG_REGION not in device.regions:
            raise ValueError("a PCI device needs a config space region")
        self.device = device
        self.path = Path(path)
        self._log = log
        self.dma = DmaSpace()
        self.irqs = IrqTable(device.irq_counts)
        self.conn: socket.socket | None = None
        self._reader: MessageReader | None = None
        self._sel: selectors.BaseSelector | None = None
        self._work: collections.deque[Callable[[], bool]] = collections.deque()
        self._inline_work = inline_work
        self._working = False  # inside a step of background work
        self.disconnects = 0  # clients that have come and gone
        self._out: memoryview | None = None  # the part of a reply the client has not taken
        self._out_fds: list[int] = []  # descriptors to go with its first byte
        self._held: list[Message] = []  # messages read, to be handled once _out is sent
        self.listener = Listener(self.path, backlog=1)
        self._handlers: dict[int, Handler] = {
            p.Command.VERSION: self._version,
            p.Command.DMA_MAP: self._dma_map,
            p.Command.DMA_UNMAP: self._dma_unmap,
            p.Command.DEVICE_GET_INFO: self._get_info,
            p.Command.DEVICE_GET_REGION_INFO: self._region_info,
            p.Command.DEVICE_GET_IRQ_INFO: self._irq_info,
            p.Command.DEVICE_SET_IRQS: self._set_irqs,
            p.Command.REGION_READ: self._region_read,
            p.Command.REGION_WRITE: self._region_write,
            p.Command.REGION_WRITE_MULTI: self._region_write_multi,
            p.Command.DEVICE_RESET: self._reset,
        }
        device.attach(self)

    # --- DeviceContext ----------------------------------------------------------------------

    def dma_read(self, addr: int, size: int) -> bytes:
        return self.dma.read(addr, size)

    def dma_write(self, addr: int, data: bytes) -> None:
        self.dma.write(addr, data)

    def set_intx(self, level: bool) -> None:
        self.irqs.set_intx(level)

    def signal_msix(self, vector: int) -> bool:
        return self.irqs.signal_msix(vector)

    def msix_enabled(self) -> bool:
        return self.irqs.msix_enabled()

    def defer(self, work: Callable[[], bool]) -> None:
        self._work.append(work)
        if self._inline_work:
            while self._work:
                self.work()

    # --- background work: a doorbell's effect, a step at a time between messages -----------

    def has_work(self) -> bool:
        return bool(self._work)

    def idle(self) -> bool:
        """No background work queued or running (tests wait for this)."""
        return not self._work and not self._working

    def work(self) -> None:
        """One step of the oldest work item; an unfinished one queues again behind the others.
        The loop calls this between messages, so a vCPU's next access is answered after one
        step at most, never after a whole ring."""
        item = self._work.popleft()
        self._working = True
        try:
            more = item()
        except Exception as e:  # as in _handle: a device bug must not kill the server
            self.log(f"device error in background work {type(e).__name__}: {e}")
            more = False
        finally:
            self._working = False
        if more and self.conn is not None:
            self._work.append(item)

    def log(self, msg: str) -> None:
        self._log(msg)

    # --- event loop plumbing ----------------------------------------------------------------

    def register(self, sel: selectors.BaseSelector) -> None:
        """Add the listening socket to a selectors loop; key.data is the callback."""
        self._sel = sel
        sel.register(self.listener.sock, selectors.EVENT_READ, self._accept)

    def close(self) -> None:
        """Idempotent: a teardown may run it again."""
        self._drop_client()
        if self._sel is not None and self.listener.sock.fileno() >= 0:
            self._sel.unregister(self.listener.sock)
        self.listener.close()

    def _accept(self) -> None:
        conn = self.listener.accept()
        if conn is None:
            return
        if self.conn is not None:
            self.log("refusing a second client: one is already connected")
            conn.close()
            return
        assert self._sel is not None
        conn.setblocking(False)  # the loop never waits on one client
        self._reader = MessageReader(conn, p.MAX_MSG_SIZE, DRAIN_LIMIT)
        self.conn = conn
        self._sel.register(conn, selectors.EVENT_READ, self._on_readable)
        self.log("client connected")

    def _drop_client(self) -> None:
        conn, self.conn = self.conn, None
        if conn is None:
            return
        try:
            if self._sel is not None:
                self._sel.unregister(conn)
            if self._reader is not None:
                self._reader.close()
                self._reader = None
            for _, _, fds in self._held:
                p.close_fds(fds)
            self._held, self._out, self._out_fds = [], None, []
            self._work.clear()
            # The client's memory and eventfds die with it; the device must not touch them.
            self.irqs.close()
            self.dma.unmap_all()
            self.device.reset()
        finally:
            # Hang up last: whoever sees the end of the stream finds the device already reset.
            conn.close()
        self.disconnects += 1
        self.log("client disconnected")

    def _on_readable(self) -> None:
        assert self._reader is not None
        try:
            messages = self._reader.read()
        except Disconnected as e:
            if str(e):
                self.log(str(e))
            self._drop_client()
            return
        self._dispatch(messages)

    def _dispatch(self, messages: list[Message]) -> None:
        for i, (header, body, fds) in enumerate(messages):
            try:
                self._handle(header, body, fds)
            except Disconnected as e:
                self.log(str(e))
                for _, _, unused in messages[i + 1 :]:
                    p.close_fds(unused)
                self._drop_client()
                return
            if self._out is not None:  # the client is not taking its replies: wait for it
                self._held = messages[i + 1 :]
                return

    def _on_writable(self) -> None:
        """The client takes more of a queued reply; once it has all, the held messages go on."""
        conn, out = self.conn, self._out
        assert conn is not None and out is not None and self._sel is not None
        try:
            sent = self._send_now(conn, out, self._out_fds)
        except Disconnected as e:
            self.log(str(e))
            self._drop_client()
            return
        if sent:
            self._out_fds = []  # they went with the first byte
        if sent < len(out):
            self._out = out[sent:]
            return
        self._out = None
        self._sel.modify(conn, selectors.EVENT_READ, self._on_readable)
        held, self._held = self._held, []
        self._dispatch(held)

    # --- messages ---------------------------------------------------------------------------
    #
    # Every trapped MMIO access of the guest is one message here, with a vCPU stalled until
    # the reply: this is the hot path, so it works on plain tuples.

    @staticmethod
    def _send_now(conn: socket.socket, data: bytes | memoryview, fds: list[int]) -> int:
        """Send what the socket takes now; 0 if it is full (the descriptors did not go either)."""
        try:
            return conn.sendmsg([data], [p.fds_ancillary(fds)]) if fds else conn.send(data)
        except BlockingIOError:
            return 0
        except OSError as e:
            raise Disconnected(f"cannot send reply: {e}") from e

    def _send(self, data: bytes, fds: list[int]) -> None:
        conn = self.conn
        assert conn is not None
        sent = self._send_now(conn, data, fds)
        if sent < len(data):  # a large reply, or a client slow to read: the rest waits
            assert self._sel is not None
            self._out = memoryview(data)[sent:]
            self._out_fds = fds if not sent else []
            self._sel.modify(conn, selectors.EVENT_WRITE, self._on_writable)

    def _handle(self, header: p.HeaderFields, body: bytes | None, fds: list[int]) -> None:
        """Dispatch one message and reply. Raises Disconnected when the reply cannot go out."""
        msg_id, command, size, flags, _ = header
        if body is None:
            name = p.command_name(command)
            self._reply_error(
                msg_id, command, flags, errno.E2BIG, f"{name}: {size}-byte message too large"
            )
            return
        if flags & _TYPE_MASK == _REPLY:
            p.close_fds(fds)
            self.log(f"unexpected reply to message {msg_id} (we send no requests); ignored")
            return
        handler = self._handlers.get(command)
        if handler is None:
            p.close_fds(fds)
            name = p.command_name(command)
            self._reply_error(msg_id, command, flags, errno.ENOTSUP, f"{name}: not supported")
            return
        if fds and command not in _TAKES_FDS:
            p.close_fds(fds)
            name = p.command_name(command)
            self._reply_error(
                msg_id, command, flags, errno.EINVAL, f"{name}: unexpected file descriptors"
            )
            return
        # A handler that returns owns the descriptors it was given; one that raises took none.
        try:
            payload, out_fds = handler(body, fds)
        except p.ProtocolError as e:
            err, msg = e.errno, str(e)
        except DmaError as e:
            err, msg = errno.EFAULT, str(e)
        except Exception as e:  # a device bug must not kill the server or stall the vCPU
            err, msg = errno.EIO, f"device error {type(e).__name__}: {e}"
        else:
            if not flags & _NO_REPLY:
                reply = _pack_header(msg_id, command, p.HEADER_SIZE + len(payload), _REPLY, 0)
                self._send(reply + payload, out_fds)
            return
        p.close_fds(fds)
        self._reply_error(msg_id, command, flags, err, f"{p.command_name(command)}: {msg}")

    def _reply_error(self, msg_id: int, command: int, flags: int, err: int, msg: str) -> None:
        self.log(msg)
        if not flags & _NO_REPLY:
            self._send(_pack_header(msg_id, command, p.HEADER_SIZE, _REPLY | _ERROR, err), [])

    @staticmethod
    def _unpack(st: struct.Struct, body: bytes, what: str) -> tuple[int, ...]:
        if len(body) < st.size:
            raise p.ProtocolError(
                errno.EINVAL, f"{what}: payload of {len(body)} bytes, need {st.size}"
            )
        return st.unpack_from(body)

    # --- handlers -------------------------------------------------------------------------

    def _version(self, body: bytes, fds: list[int]) -> tuple[bytes, list[int]]:
        major, minor = self._unpack(p.VERSION, body, "VERSION")
        caps = body[p.VERSION.size :]
        if major != 0:
            raise p.ProtocolError(errno.ENOTSUP, f"protocol version {major}.{minor} unsupported")
        if not caps.endswith(b"\0"):
            raise p.ProtocolError(errno.EINVAL, "capabilities string not NUL-terminated")
        try:
            json.loads(caps[:-1] or b"{}")
        except ValueError as e:
            raise p.ProtocolError(errno.EINVAL, f"capabilities are not JSON: {e}") from e
        ours = (
            json.dumps(
                {
                    "capabilities": {
                        "max_msg_fds": p.MAX_MSG_FDS,
                        "max_data_xfer_size": p.MAX_DATA_XFER,
                        "pgsizes": p.PAGE_SIZE,
                    }
                },
                separators=(",", ":"),
            ).encode()
            + b"\0"
        )
        if len(ours) > len(caps):  # QEMU rejects a reply longer than its request
            ours = b"{}\0"
        return p.VERSION.pack(0, 0) + ours, []

    def _dma_map(self, body: bytes, fds: list[int]) -> tuple[bytes, list[int]]:
        _, flags, offset, iova, size = self._unpack(p.DMA_MAP, body, "DMA_MAP")
        if len(fds) > 1:
            raise p.ProtocolError(errno.EINVAL, f"DMA_MAP with {len(fds)} fds")
        self.dma.map(
            iova, size, offset, fds[0] if fds else None, writable=bool(flags & p.DMA_MAP_FLAG_WRITE)
        )
        return b"", []

    def _dma_unmap(self, body: bytes, fds: list[int]) -> tuple[bytes, list[int]]:
        _, flags, iova, size = self._unpack(p.DMA_UNMAP, body, "DMA_UNMAP")
        if flags & p.DMA_UNMAP_FLAG_ALL:
            self.dma.unmap_all()
            iova, size = 0, 1 << 64
        else:
            self.dma.unmap(iova, size)
        self.device.dma_unmapped(iova, size)
        return body[: p.DMA_UNMAP.size], []

    def _get_info(self, body: bytes, fds: list[int]) -> tuple[bytes, list[int]]:
        self._unpack(p.DEVICE_INFO, body, "DEVICE_GET_INFO")
        flags = p.DEVICE_FLAGS_PCI | p.DEVICE_FLAGS_RESET
        return p.DEVICE_INFO.pack(p.DEVICE_INFO.size, flags, NUM_REGIONS, NUM_IRQ_INDEXES), []

    def _region_info(self, body: bytes, fds: list[int]) -> tuple[bytes, list[int]]:
        argsz, _, index, _, _, _ = self._unpack(p.REGION_INFO, body, "DEVICE_GET_REGION_INFO")
        if not 0 <= index < NUM_REGIONS:
            raise p.ProtocolError(errno.EINVAL, f"no region {index}")
        region = self.device.regions.get(index, Region(size=0))
        flags = (p.REGION_INFO_FLAG_READ if region.readable else 0) | (
            p.REGION_INFO_FLAG_WRITE if region.writable else 0
        )
        caps = b""
        if region.fd is not None and region.mmap_areas:
            flags |= p.REGION_INFO_FLAG_MMAP | p.REGION_INFO_FLAG_CAPS
            caps = (
                p.CAP_HEADER.pack(p.REGION_INFO_CAP_SPARSE_MMAP, 1, 0)
                + p.SPARSE_MMAP.pack(len(region.mmap_areas), 0)
                + b"".join(p.SPARSE_AREA.pack(o, s) for o, s in region.mmap_areas)
            )
        needed = p.REGION_INFO.size + len(caps)
        if argsz < needed:
            # Too small for the capabilities: say how much is needed and QEMU asks again.
            # No CAPS flag here: QEMU rejects CAPS with a cap_offset outside the reply.
            short_flags = flags & ~p.REGION_INFO_FLAG_CAPS
            return p.REGION_INFO.pack(needed, short_flags, index, 0, region.size, 0), []
        cap_offset = p.REGION_INFO.size if caps else 0
        info = p.REGION_INFO.pack(needed, flags, index, cap_offset, region.size, 0)
        return info + caps, [region.fd] if caps and region.fd is not None else []

    def _irq_info(self, body: bytes, fds: list[int]) -> tuple[bytes, list[int]]:
        _, _, index, _ = self._unpack(p.IRQ_INFO, body, "DEVICE_GET_IRQ_INFO")
        if not 0 <= index < NUM_IRQ_INDEXES:
            raise p.ProtocolError(errno.EINVAL, f"no IRQ index {index}")
        count = self.irqs.indexes[index].count
        return p.IRQ_INFO.pack(p.IRQ_INFO.size, self.irqs.info_flags(index), index, count), []

    def _set_irqs(self, body: bytes, fds: list[int]) -> tuple[bytes, list[int]]:
        _, flags, index, start, count = self._unpack(p.IRQ_SET, body, "DEVICE_SET_IRQS")
        self.irqs.set_irqs(flags, index, start, count, body[p.IRQ_SET.size :], fds)
        return b"", []

    def _access(self, index: int, offset: int, count: int, write: bool) -> Region:
        what = "write" if write else "read"
        region = self.device.regions.get(index)
        if region is None or region.size == 0:
            raise p.ProtocolError(errno.EINVAL, f"{what} of region {index}, which does not exist")
        if count == 0 or count > p.MAX_DATA_XFER:
            raise p.ProtocolError(errno.EINVAL, f"{what} of {count} bytes")
        if offset + count > region.size:
            raise p.ProtocolError(
                errno.EINVAL,
                f"guest {what} of {count} bytes at {offset:#x} is outside"
                f" region {index} (size {region.size:#x})",
            )
        if (region.write if write else region.read) is None:
            raise p.ProtocolError(errno.EINVAL, f"region {index} is not {what}able")
        return region

    def _region_read(self, body: bytes, fds: list[int]) -> tuple[bytes, list[int]]:
        offset, index, count = self._unpack(p.REGION_RW, body, "REGION_READ")
        region = self._access(index, offset, count, write=False)
        assert region.read is not None
        data = region.read(offset, count)
        if len(data) != count:
            raise p.ProtocolError(errno.EIO, f"device returned {len(data)} of {count} bytes")
        return p.REGION_RW.pack(offset, index, count) + data, []

    def _region_write(self, body: bytes, fds: list[int]) -> tuple[bytes, list[int]]:
        offset, index, count = self._unpack(p.REGION_RW, body, "REGION_WRITE")
        data = body[p.REGION_RW.size :]
        if len(data) != count:
            raise p.ProtocolError(
                errno.EINVAL, f"REGION_WRITE says {count} bytes but carries {len(data)}"
            )
        region = self._access(index, offset, count, write=True)
        assert region.write is not None
        region.write(offset, data)
        return p.REGION_RW.pack(offset, index, count), []

    def _region_write_multi(self, body: bytes, fds: list[int]) -> tuple[bytes, list[int]]:
        (n,) = self._unpack(p.WRITE_MULTI_COUNT, body, "REGION_WRITE_MULTI")
        if len(body) < p.WRITE_MULTI_COUNT.size + n * p.WRITE_ONE.size:
            raise p.ProtocolError(errno.EINVAL, f"REGION_WRITE_MULTI: {n} records do not fit")
        for i in range(n):
            offset, index, count, data = p.WRITE_ONE.unpack_from(
                body, p.WRITE_MULTI_COUNT.size + i * p.WRITE_ONE.size
            )
            if count > len(data):
                raise p.ProtocolError(errno.EINVAL, f"REGION_WRITE_MULTI: record of {count}")
            region = self._access(index, offset, count, write=True)
            assert region.write is not None
            region.write(offset, data[:count])
        return b"", []

    def _reset(self, body: bytes, fds: list[int]) -> tuple[bytes, list[int]]:
        self.device.reset()
        return b"", []
