"""The vfio-user transport against a tiny test device, through the real wire format."""

from __future__ import annotations

import errno
import itertools
import mmap
import os
import select
import socket
import struct
from pathlib import Path

import pytest

from tests.unit.toy_device import DOORBELL, PAGE, ToyDevice
from tests.unit.vfio_loop import running_loop, wait_idle
from vfio_user import CONFIG_REGION, IRQ_INTX, IRQ_MSIX
from vfio_user import protocol as p
from vfio_user.client import Client, ClientError
from vfio_user.server import Server


def test_version_reply_fits_request(served: tuple[ToyDevice, Server, Client]) -> None:
    _, _, client = served
    caps = client.version()["capabilities"]
    assert isinstance(caps, dict)
    assert caps["pgsizes"] % 4096 == 0
    assert caps["max_msg_fds"] <= 16


def test_device_and_region_info_with_sparse_mmap(served: tuple[ToyDevice, Server, Client]) -> None:
    dev, _, client = served
    flags, nregions, nirqs = client.device_info()
    assert flags & p.DEVICE_FLAGS_PCI and nregions >= 8 and nirqs >= 3
    info = client.region_info(0)
    assert info.size == 2 * PAGE
    assert info.mmap_areas == [(PAGE, PAGE)]
    assert info.fd is not None
    # The fd we got is the device's memory: a write through it shows in the device.
    shared = mmap.mmap(info.fd, 2 * PAGE)
    shared[PAGE : PAGE + 4] = b"\x11\x22\x33\x44"
    assert dev.mem[PAGE : PAGE + 4] == b"\x11\x22\x33\x44"
    shared.close()
    os.close(info.fd)
    assert client.region_info(1).size == 0  # absent BAR


def test_region_read_write_reach_callbacks(served: tuple[ToyDevice, Server, Client]) -> None:
    dev, _, client = served
    client.write32(0, 0x10, 0xDEADBEEF)
    assert dev.writes == [(0x10, struct.pack("<I", 0xDEADBEEF))]
    assert client.read32(0, 0x10) == 0xDEADBEEF
    assert client.read(CONFIG_REGION, 0, 4) == bytes.fromhex("b3150310")


@pytest.mark.parametrize(
    ("region", "offset", "count"), [(0, 2 * PAGE - 2, 4), (3, 0, 4), (0, 0, 0)]
)
def test_access_outside_region_is_an_error(
    served: tuple[ToyDevice, Server, Client], region: int, offset: int, count: int
) -> None:
    _, _, client = served
    with pytest.raises(ClientError) as e:
        client.read(region, offset, count)
    assert e.value.errno == errno.EINVAL
    assert client.read32(0, 0) == 0  # the stream is still in sync


def test_device_exception_becomes_eio(served: tuple[ToyDevice, Server, Client]) -> None:
    _, server, client = served
    with pytest.raises(ClientError) as e:
        client.read32(0, 0x100)
    assert e.value.errno == errno.EIO
    assert any("boom" in line for line in server.logs)  # type: ignore[attr-defined]


def test_malformed_messages_get_error_replies(served: tuple[ToyDevice, Server, Client]) -> None:
    _, server, client = served
    with pytest.raises(ClientError) as e:
        client.request(p.Command.DMA_MAP, b"\x00" * 8)  # truncated payload
    assert e.value.errno == errno.EINVAL
    with pytest.raises(ClientError) as e:
        client.request(99)
    assert e.value.errno == errno.ENOTSUP
    with pytest.raises(ClientError) as e:  # says 4 bytes, carries 2
        client.request(p.Command.REGION_WRITE, p.REGION_RW.pack(0, 0, 4) + b"\x00\x00")
    assert e.value.errno == errno.EINVAL
    # Oversized: drained and refused, the stream stays usable.
    big = p.MAX_MSG_SIZE + 16
    client.send_raw(p.Header(7, p.Command.REGION_WRITE, big, 0, 0).pack() + bytes(big - 16))
    hdr, _, _ = client.recv_reply()
    assert hdr.flags & p.Flags.ERROR and hdr.error == errno.E2BIG and hdr.msg_id == 7
    assert client.read32(0, 0) == 0
    logs = server.logs  # type: ignore[attr-defined]
    assert any("too large" in line for line in logs)


def test_descriptors_with_a_request_that_takes_none_are_refused(
    served: tuple[ToyDevice, Server, Client],
) -> None:
    _, server, client = served
    r, w = os.pipe()
    try:
        with pytest.raises(ClientError) as e:
            client.request(p.Command.REGION_READ, p.REGION_RW.pack(0, 0, 4), fds=[w])
        assert e.value.errno == errno.EINVAL
        logs = server.logs  # type: ignore[attr-defined]
        assert any("REGION_READ: unexpected file descriptors" in line for line in logs)
        os.close(w)
        w = -1
        # The server closed its copy: with no writer left, the pipe reads as ended (a copy
        # still open would make this non-blocking read raise BlockingIOError instead).
        os.set_blocking(r, False)
        assert os.read(r, 1) == b""
        assert client.read32(0, 0) == 0  # and the stream is still in step
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)


def test_bad_header_hangs_up_and_server_accepts_again(
    served: tuple[ToyDevice, Server, Client], tmp_path: Path
) -> None:
    dev, _, client = served
    client.send_raw(p.Header(1, p.Command.VERSION, 8, 0, 0).pack())
    assert client.sock.recv(16) == b""  # server hung up: the stream cannot be resynced
    assert dev.resets == 1  # and the device forgot the client
    with Client(tmp_path / "toy.sock") as again:
        again.version()
        assert again.read32(0, 0) == 0


def test_no_reply_write(served: tuple[ToyDevice, Server, Client]) -> None:
    _, _, client = served
    client.request(
        p.Command.REGION_WRITE, p.REGION_RW.pack(4, 0, 4) + b"abcd", flags=p.Flags.NO_REPLY
    )
    assert client.read(0, 4, 4) == b"abcd"


def test_dma_through_shared_memfd(served: tuple[ToyDevice, Server, Client]) -> None:
    _, server, client = served
    ram = os.memfd_create("guest-ram")
    os.ftruncate(ram, 4 * PAGE)
    guest = mmap.mmap(ram, 4 * PAGE)
    client.dma_map(0x10000, 2 * PAGE, os.dup(ram), offset=2 * PAGE)
    client.dma_map(0xF0000, PAGE, None)  # a window without memory (e.g. ROM)
    guest[2 * PAGE : 2 * PAGE + 3] = b"xyz"
    assert server.dma_read(0x10000, 3) == b"xyz"
    server.dma_write(0x10000 + PAGE, b"hi")
    assert guest[3 * PAGE : 3 * PAGE + 2] == b"hi"
    from vfio_user import DmaError

    for addr in (0x20000, 0x10000 + 2 * PAGE - 1, 0xF0000):
        with pytest.raises(DmaError):
            server.dma_read(addr, 4)
    with pytest.raises(ClientError):  # overlapping window
        client.dma_map(0x10000 + PAGE, PAGE, None)
    client.dma_unmap(0x10000, 2 * PAGE)
    with pytest.raises(DmaError):
        server.dma_read(0x10000, 1)
    os.close(ram)


def _pending(fd: int) -> bool:
    return bool(select.select([fd], [], [], 0)[0])


def test_intx_automask_and_unmask(served: tuple[ToyDevice, Server, Client]) -> None:
    _, server, client = served
    efd = os.eventfd(0, os.EFD_NONBLOCK)
    client.set_irq_eventfds(IRQ_INTX, 0, [os.dup(efd)])
    server.set_intx(True)
    assert _pending(efd)
    os.eventfd_read(efd)
    server.set_intx(True)  # still masked: QEMU has not unmasked yet
    assert not _pending(efd)
    client.unmask_intx()  # line still high -> delivered again
    assert _pending(efd)
    os.eventfd_read(efd)
    server.set_intx(False)
    client.unmask_intx()
    assert not _pending(efd)
    os.close(efd)


def test_msix_vectors(served: tuple[ToyDevice, Server, Client]) -> None:
    _, server, client = served
    assert not server.msix_enabled()
    fds = [os.eventfd(0, os.EFD_NONBLOCK) for _ in range(2)]
    client.set_irq_eventfds(IRQ_MSIX, 1, [os.dup(f) for f in fds])
    assert server.msix_enabled()
    assert not server.signal_msix(0)  # no eventfd for vector 0
    assert server.signal_msix(2)
    assert _pending(fds[1]) and not _pending(fds[0])
    with pytest.raises(ClientError):
        client.set_irq_eventfds(IRQ_MSIX, 3, [os.dup(fds[0]), os.dup(fds[1])])  # beyond count
    client.disable_irqs(IRQ_MSIX)
    assert not server.msix_enabled()
    for f in fds:
        os.close(f)


def test_reset_reaches_device(served: tuple[ToyDevice, Server, Client]) -> None:
    dev, _, client = served
    client.reset()
    assert dev.resets == 1


def test_second_client_is_refused(served: tuple[ToyDevice, Server, Client], tmp_path: Path) -> None:
    _, _, client = served
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(str(tmp_path / "toy.sock"))
    assert s.recv(1) == b""
    s.close()
    assert client.read32(0, 0) == 0


def test_background_work_runs_between_messages(served: tuple[ToyDevice, Server, Client]) -> None:
    """A doorbell's work (200 steps of STEP_TIME) does not hold up the next access: the read
    after it is answered within a few steps; two walks take turns; all steps run, in order."""
    dev, server, client = served
    client.write(0, DOORBELL, (200).to_bytes(4, "little"))
    client.write(0, DOORBELL, (200).to_bytes(4, "little"))
    client.read(CONFIG_REGION, 0, 4)
    assert len(dev.steps) < 20, f"the read waited for {len(dev.steps)} steps"
    wait_idle(server, timeout=10)
    first, second = (n for n, _ in itertools.groupby(sorted(dev.steps)))
    assert dev.steps.count(first) == dev.steps.count(second) == 200
    last_of_first = len(dev.steps) - 1 - dev.steps[::-1].index(first)
    assert dev.steps.index(second) < last_of_first  # turns, not one walk after the other


def test_inline_work_is_done_when_its_write_is_answered(tmp_path: Path) -> None:
    """--inline-work: the doorbell's 50 steps all ran before the write returned, with no loop
    running background work between messages."""
    dev = ToyDevice()
    server = Server(dev, tmp_path / "toy.sock", inline_work=True)
    # No background runner in the loop: only the write itself can run the steps.
    with running_loop(server.register), Client(tmp_path / "toy.sock") as client:
        client.version()
        client.write(0, DOORBELL, (50).to_bytes(4, "little"))
        assert len(dev.steps) == 50
        assert server.idle()
    server.close()
    dev.close()
