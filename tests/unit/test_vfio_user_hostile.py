"""The vfio-user transport against clients that misbehave on purpose, through the real socket.

Each test is one failure seen in the field: descriptors leaked by refused messages, DMA to
memory the client took back, a client that stops reading its replies.
"""

from __future__ import annotations

import errno
import fcntl
import gc
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.unit.toy_device import DMA_TRIGGER, PAGE, ToyDevice
from vfio_user import protocol as p
from vfio_user.client import Client, ClientError
from vfio_user.server import Server

Served = tuple[ToyDevice, Server, Client]
EINVAL, EFAULT = errno.EINVAL, errno.EFAULT


def _open_fds() -> int:
    gc.collect()  # earlier tests' sockets and mappings must not close in between
    return len(os.listdir("/proc/self/fd"))


def _memfd() -> int:
    fd = os.memfd_create("guest-ram")
    os.ftruncate(fd, 2 * PAGE)
    return fd


def _eventfd() -> int:
    return os.eventfd(0)


def _pipe_end() -> int:
    r, w = os.pipe()
    os.close(r)
    return w


def _dma_map(size: int = PAGE, argsz: int = p.DMA_MAP.size) -> bytes:
    flags = p.DMA_MAP_FLAG_READ | p.DMA_MAP_FLAG_WRITE
    return p.DMA_MAP.pack(argsz, flags, 0, 0x10000, size)


def _set_irqs(index: int = 2, count: int = 1) -> bytes:
    flags = p.IRQ_SET_DATA_EVENTFD | p.IRQ_SET_ACTION_TRIGGER
    return p.IRQ_SET.pack(p.IRQ_SET.size, flags, index, 0, count)


# (what, command, payload, descriptors to attach, the errno of the refusal)
REFUSED: list[tuple[str, int, bytes, list[Callable[[], int]], int]] = [
    ("DMA_MAP shorter than its struct", p.Command.DMA_MAP, _dma_map()[:8], [_memfd], EINVAL),
    ("DMA_MAP with two fds", p.Command.DMA_MAP, _dma_map(), [_memfd, _memfd], EINVAL),
    ("DMA_MAP of a pipe", p.Command.DMA_MAP, _dma_map(), [_pipe_end], EFAULT),
    ("DMA_MAP beyond its file", p.Command.DMA_MAP, _dma_map(4 * PAGE), [_memfd], EFAULT),
    ("DMA_MAP of size 0", p.Command.DMA_MAP, _dma_map(0), [_memfd], EFAULT),
    ("SET_IRQS shorter than its struct", p.Command.DEVICE_SET_IRQS, b"\0" * 4, [_eventfd], EINVAL),
    ("SET_IRQS of no index", p.Command.DEVICE_SET_IRQS, _set_irqs(9), [_eventfd], EINVAL),
    ("SET_IRQS fd count", p.Command.DEVICE_SET_IRQS, _set_irqs(count=2), [_eventfd], EINVAL),
    ("SET_IRQS of a pipe", p.Command.DEVICE_SET_IRQS, _set_irqs(), [_pipe_end], EINVAL),
    ("REGION_READ with an fd", p.Command.REGION_READ, p.REGION_RW.pack(0, 0, 4), [_memfd], EINVAL),
    ("VERSION with an fd", p.Command.VERSION, p.VERSION.pack(0, 0) + b"{}\0", [_memfd], EINVAL),
    ("unknown command with an fd", 99, b"", [_memfd], errno.ENOTSUP),
]


@pytest.mark.parametrize(
    ("command", "payload", "makers", "err"),
    [r[1:] for r in REFUSED],
    ids=[r[0] for r in REFUSED],
)
def test_refused_messages_close_their_descriptors(
    served: Served, command: int, payload: bytes, makers: list[Callable[[], int]], err: int
) -> None:
    _, _, client = served
    before = _open_fds()
    for _ in range(50):
        fds = [make() for make in makers]
        try:
            with pytest.raises(ClientError) as e:
                client.request(command, payload, fds=fds)
            assert e.value.errno == err
        finally:
            for fd in fds:
                os.close(fd)
    assert _open_fds() == before  # the server kept none of the 50 copies
    assert client.read32(0, 0) == 0  # and the stream is still in step


def test_descriptors_of_a_reply_flagged_message_are_closed(served: Served) -> None:
    _, server, client = served
    before = _open_fds()
    for _ in range(50):
        fd = _memfd()
        client.send_raw(p.Header(1, p.Command.DMA_MAP, 16, p.Flags.REPLY, 0).pack(), [fd])
        os.close(fd)
    assert client.read32(0, 0) == 0  # answered after the 50 ignored ones
    assert _open_fds() == before
    assert any("unexpected reply" in line for line in server.logs)  # type: ignore[attr-defined]


def test_descriptors_of_a_message_cut_short_by_a_bad_header_are_closed(
    served: Served, tmp_path: Path
) -> None:
    _, _, client = served
    before = _open_fds()
    fd = _memfd()
    whole = p.Header(1, p.Command.DMA_MAP, 16 + p.DMA_MAP.size, 0, 0).pack() + _dma_map()
    # The fd rides on the first part; Linux ends the server's read there. The second read
    # completes the DMA_MAP and brings a header the stream cannot be resynchronised after.
    client.send_raw(whole[:20], [fd])
    os.close(fd)
    client.send_raw(whole[20:] + p.Header(2, p.Command.VERSION, 8, 0, 0).pack())
    assert client.sock.recv(16) == b""  # hung up
    with Client(tmp_path / "toy.sock") as again:  # the server is ready for the next one
        again.version()
        assert _open_fds() == before + 1  # `again` itself


def test_dma_through_a_window_sealed_against_shrinking(served: Served) -> None:
    dev, _, client = served
    # As QEMU's memory-backend-memfd makes guest RAM (seal=on is its default).
    ram = os.memfd_create("guest-ram", os.MFD_ALLOW_SEALING)
    os.ftruncate(ram, 2 * PAGE)
    fcntl.fcntl(ram, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)
    os.pwrite(ram, b"sealed!!", PAGE)
    client.dma_map(0x10000, 2 * PAGE, os.dup(ram))
    client.write(0, DMA_TRIGGER, (0x10000 + PAGE).to_bytes(8, "little"))
    assert dev.dma_data == b"sealed!!"
    with pytest.raises(PermissionError):
        os.ftruncate(ram, 0)  # the seal is why direct access to the mapping is safe
    os.close(ram)


def test_dma_after_the_backing_shrank_is_refused(served: Served) -> None:
    """A memfd without seals can shrink under its mapping: the server reads it with pread,
    so the access fails with an error reply instead of a SIGBUS (which would kill pytest)."""
    dev, server, client = served
    ram = _memfd()
    os.pwrite(ram, b"guestram", PAGE)
    client.dma_map(0x10000, 2 * PAGE, os.dup(ram))
    trigger = (0x10000 + PAGE).to_bytes(8, "little")
    client.write(0, DMA_TRIGGER, trigger)
    assert dev.dma_data == b"guestram"
    os.ftruncate(ram, PAGE)  # the client takes the second page back
    with pytest.raises(ClientError) as e:
        client.write(0, DMA_TRIGGER, trigger)
    assert e.value.errno == errno.EFAULT
    assert any("shrank" in line for line in server.logs)  # type: ignore[attr-defined]
    assert client.read32(0, 0) == 0
    os.close(ram)


def test_a_client_that_stops_reading_stalls_no_one(served: Served, tmp_path: Path) -> None:
    dev, _, client = served
    # 400 replies of 8 KiB (3.2 MiB) are far more than the socket buffers hold.
    n, size = 400, 2 * PAGE
    request = p.Header(0, p.Command.REGION_READ, 16 + p.REGION_RW.size, 0, 0).pack()
    client.send_raw(b"".join(request + p.REGION_RW.pack(0, 0, size) for _ in range(n)))
    t0 = time.monotonic()
    second = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    second.settimeout(5)
    second.connect(str(tmp_path / "toy.sock"))
    assert second.recv(1) == b""  # refused (one client at a time) ...
    assert time.monotonic() - t0 < 0.5  # ... at once, not after the stalled send
    second.close()
    # The slow client loses nothing: every reply comes, whole and in order.
    reply = p.Header(0, p.Command.REGION_READ, 16 + p.REGION_RW.size + size, p.Flags.REPLY, 0)
    expected = reply.pack() + p.REGION_RW.pack(0, 0, size) + dev.mem[:size]
    stream = client.sock.makefile("rb")
    for _ in range(n):
        assert stream.read(len(expected)) == expected
    stream.close()
    assert client.read32(0, 0) == 0
