"""Splitting the client's byte stream into vfio-user messages.

Each wakeup takes one recvmsg of whatever the client has sent: usually exactly one message (a
trapped MMIO access, with a vCPU stalled until the reply), sometimes several (posted writes),
or part of one (a large write). One system call per message matters on that path.

File descriptors travel as SCM_RIGHTS with the first byte of their message, and Linux ends a
stream recvmsg right after the data that carried descriptors: so the descriptors of one read
belong to the last message that starts in it.
"""

from __future__ import annotations

import socket

from . import protocol as p

RX_SIZE = 64 << 10  # bytes asked of each recvmsg
_HEADER = p.HEADER
_HEADER_SIZE = p.HEADER_SIZE

# body is None for a message too large to accept: drained from the stream, to be refused.
Message = tuple[p.HeaderFields, bytes | None, list[int]]


class Disconnected(Exception):
    """The stream is gone or cannot be resynchronised; the text says why ("" for a clean EOF)."""


class MessageReader:
    def __init__(self, sock: socket.socket, max_size: int, drain_limit: int) -> None:
        self._sock = sock
        self._max_size = max_size
        self._drain_limit = drain_limit
        self._buf = bytearray()  # received bytes that do not yet make a whole message
        self._offset = 0  # stream offset of _buf[0], always a message boundary
        self._fds: dict[int, list[int]] = {}  # stream offset of a message -> its descriptors
        self._skip = 0  # bytes of an oversized message still to discard
        self._oversized: p.HeaderFields | None = None  # that message's header

    def read(self) -> list[Message]:
        """One recvmsg: the messages it completed, in order (often one, possibly none)."""
        try:
            data, anc, _, _ = self._sock.recvmsg(RX_SIZE, p.FDS_SPACE)
        except BlockingIOError:
            return []  # a spurious wakeup
        except OSError as e:
            raise Disconnected(f"socket error: {e}") from e
        fds = p.fds_from_ancillary(anc) if anc else []
        if not data:
            p.close_fds(fds)
            pending = len(self._buf) + self._skip
            raise Disconnected(f"client closed mid-message ({pending} bytes)" if pending else "")
        if not self._buf and not self._skip and len(data) >= _HEADER_SIZE:
            header: p.HeaderFields = _HEADER.unpack_from(data)
            if header[2] == len(data) <= self._max_size:  # exactly one message: no copies
                self._offset += len(data)
                return [(header, data[_HEADER_SIZE:], fds)]
        return self._split(data, fds)

    def close(self) -> None:
        """Close descriptors that arrived with messages never returned."""
        for fds in self._fds.values():
            p.close_fds(fds)
        self._fds.clear()

    def _split(self, data: bytes, fds: list[int]) -> list[Message]:
        out: list[Message] = []
        try:
            self._split_into(out, data, fds)
        except Disconnected:
            for _, _, taken in out:  # whole messages before the break are never handled
                p.close_fds(taken)
            raise
        return out

    def _split_into(self, out: list[Message], data: bytes, fds: list[int]) -> None:
        if self._skip:
            n = min(self._skip, len(data))
            self._skip -= n
            self._offset += n
            data = data[n:]
            if not self._skip:
                assert self._oversized is not None
                out.append((self._oversized, None, []))
                self._oversized = None
        buf = self._buf
        start = len(buf)
        buf += data
        if fds:
            owner = self._last_start_from(start)
            if owner is None:
                p.close_fds(fds)
                raise Disconnected("file descriptors arrived in the middle of a message")
            self._fds[self._offset + owner] = fds
        while len(buf) >= _HEADER_SIZE:
            header: p.HeaderFields = _HEADER.unpack_from(buf)
            size = header[2]
            if size < _HEADER_SIZE:
                raise Disconnected(f"malformed header: size {size} < {_HEADER_SIZE}; hanging up")
            if size > self._max_size:
                if size > self._drain_limit:
                    raise Disconnected(f"message of {size} bytes is absurd; hanging up")
                p.close_fds(self._fds.pop(self._offset, []))
                take = min(size, len(buf))
                del buf[:take]
                self._offset += take
                self._skip = size - take
                if self._skip:
                    self._oversized = header
                    break
                out.append((header, None, []))
                continue
            if len(buf) < size:
                break
            body = bytes(buf[_HEADER_SIZE:size])
            del buf[:size]
            out.append((header, body, self._fds.pop(self._offset, [])))
            self._offset += size

    def _last_start_from(self, start: int) -> int | None:
        """Offset in the buffer of the last message that starts at or after `start`."""
        buf = self._buf
        pos, last = 0, None
        while pos < len(buf):
            if pos >= start:
                last = pos
            if pos + _HEADER_SIZE > len(buf):
                break
            size = _HEADER.unpack_from(buf, pos)[2]
            if size < _HEADER_SIZE or size > self._max_size:
                break  # the split loop reports it
            pos += size
        return last
