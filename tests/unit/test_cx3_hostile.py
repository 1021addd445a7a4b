"""`python -m cx3` against hostile clients and abrupt teardowns, as a process of its own.

Out of file descriptors, guest RAM taken back under a DMA, a client that stops reading, SIGTERM
in the middle of a client's teardown, a guest that floods the log: the model must stay up and
serve (or exit 0 when told to), never crash, spin or stall.
"""

from __future__ import annotations

import os
import re
import socket
import time
from pathlib import Path

import pytest

from cx3 import layout
from cx3.client import ControlClient
from cx3.hcr import STATUS
from cx3.opcodes import Opcode
from tests.unit.cx3_guest import CmdError, Driver, Guest, MemfdRam, TransportBus
from tests.unit.model_proc import Model, start_model
from vfio_user import IRQ_INTX, IRQ_MSIX
from vfio_user import protocol as p
from vfio_user.client import Client, ClientError
from vfio_user.device import BAR0_REGION, CONFIG_REGION

GUEST_BASE = 0x1_0000_0000
GUEST_SIZE = 8 << 20


def _ping(sock: socket.socket) -> bytes:
    """One control request on a raw socket: the reply line, or b"" if the model hung up."""
    try:
        sock.sendall(b'{"op": "ping"}\n')
        return sock.recv(4096)
    except ConnectionResetError:  # hung up with the request unread
        return b""


def test_out_of_descriptors_connections_are_refused_and_service_resumes(tmp_path: Path) -> None:
    m = start_model(tmp_path, max_fds=48)
    held: list[socket.socket] = []
    try:
        while True:  # control connections until the model has no descriptor left for one
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(5)  # a model that spins on the pending connection never answers
            s.connect(str(m.control))
            if not _ping(s):
                s.close()
                break  # refused: accepted and closed at once
            held.append(s)
            assert len(held) < 48
        with Client(m.socket) as refused, pytest.raises(ConnectionError):
            refused.version()  # QEMU at the limit: refused, not the end of the model
        assert m.proc.poll() is None
        for s in held[:8]:
            s.close()
        # The model takes events in the order they came: this reply means it saw the closes.
        assert _ping(held[8]).startswith(b'{"ok": true')
        with Client(m.socket) as client:
            client.version()
            assert client.read(CONFIG_REGION, 0, 4) == bytes.fromhex("b3150310")
    finally:
        for s in held:
            s.close()
        m.stop_cleanly()
    assert "out of file descriptors" in m.log.read_text()


def test_dma_into_guest_ram_taken_back_is_refused(model: Model) -> None:
    ram = MemfdRam(GUEST_BASE, GUEST_SIZE)
    with Client(model.socket) as client:
        client.version()
        client.dma_map(GUEST_BASE, GUEST_SIZE, os.dup(ram.fd))
        driver = Driver(TransportBus(client), Guest(ram, GUEST_BASE, GUEST_SIZE))
        driver.config_write16(0x04, 0x0006)  # bus master
        driver.reset()
        driver.cmd(Opcode.QUERY_FW, out_param=GUEST_BASE)  # the outbox is written by DMA
        ram.mem.close()
        os.ftruncate(ram.fd, 0)  # a client shrinks the memfd it mapped
        with pytest.raises(CmdError):
            driver.cmd(Opcode.QUERY_FW, out_param=GUEST_BASE)
        assert model.proc.poll() is None
        assert client.read(CONFIG_REGION, 0, 4) == bytes.fromhex("b3150310")
    assert "shrank" in model.log.read_text()


def test_the_bar_memory_cannot_be_taken_back(model: Model) -> None:
    with Client(model.socket) as client, ControlClient(model.control) as control:
        client.version()
        bar0 = client.region_info(BAR0_REGION)
        assert bar0.fd is not None
        with pytest.raises(PermissionError):
            os.ftruncate(bar0.fd, 0)  # sealed: the model's own mapping of it stays whole
        os.close(bar0.fd)
        assert control.read_bar0(layout.SIZE - 16, 16) == bytes(16)


def test_a_client_that_stops_reading_stalls_no_one(model: Model) -> None:
    stalled = Client(model.socket)
    stalled.version()
    # Eight 1 MiB reads of BAR0, never read back: more than any socket buffer takes.
    rw = p.REGION_RW.pack(0, BAR0_REGION, 1 << 20)
    request = p.Header(0, p.Command.REGION_READ, p.HEADER_SIZE + len(rw), 0, 0).pack() + rw
    stalled.send_raw(request * 8)
    t0 = time.monotonic()
    with ControlClient(model.control) as control:
        control.ping()
    second = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    second.settimeout(5)
    second.connect(str(model.socket))
    assert second.recv(1) == b""  # one vfio-user client at a time: refused, at once
    second.close()
    assert time.monotonic() - t0 < 0.5
    stalled.close()
    # The model takes events in the order they came: this reply means it saw the close.
    with ControlClient(model.control) as control:
        control.ping()
    with Client(model.socket) as client:
        client.version()
        assert client.read(CONFIG_REGION, 0, 4) == bytes.fromhex("b3150310")


@pytest.mark.parametrize("round_", range(4))
def test_sigterm_as_the_client_goes_exits_0_without_a_traceback(
    tmp_path: Path, round_: int
) -> None:
    """The rig's teardown: QEMU goes (the model drops its client: unmaps DMA, closes eventfds,
    resets the device) and SIGTERM follows at once, landing anywhere in that."""
    m = start_model(tmp_path)
    ram = MemfdRam(GUEST_BASE, GUEST_SIZE)
    client = Client(m.socket)
    client.version()
    client.dma_map(GUEST_BASE, GUEST_SIZE, os.dup(ram.fd))
    eventfds = [os.eventfd(0) for _ in range(9)]
    client.set_irq_eventfds(IRQ_INTX, 0, eventfds[:1])
    client.set_irq_eventfds(IRQ_MSIX, 0, eventfds[1:])
    p.close_fds(eventfds)  # the model has its own copies
    client.close()
    time.sleep(round_ * 0.002)  # move the signal across the teardown, round by round
    m.stop_cleanly()


def test_a_flood_of_one_log_line_is_collapsed_and_the_log_is_capped(tmp_path: Path) -> None:
    cap = 64 << 10
    m = start_model(tmp_path, "--log-max-bytes", str(cap))
    status = layout.HCR_OFFSET + STATUS
    try:
        with Client(m.socket) as client:
            client.version()
            for _ in range(20_000):  # the same bad access, the same line each time
                client.write(BAR0_REGION, status, b"\0\0")
            for i in range(1_000):  # ~95 KB of lines that differ: past the cap, once
                with pytest.raises(ClientError):
                    client.write(BAR0_REGION, layout.SIZE + i, b"\0\0")
    finally:
        m.stop_cleanly()
    old = m.log.with_name(m.log.name + ".1")
    text = old.read_text() + m.log.read_text()
    assert m.log.stat().st_size <= cap and old.stat().st_size <= cap
    line = f"splits register {status:#x}"
    assert sum(line in t for t in text.splitlines()) == 1
    repeats = re.findall(r"last line repeated (\d+) times", text)
    assert sum(int(n) for n in repeats) == 19_999
    assert "log rotated" in m.log.read_text().splitlines()[0]
    assert "Traceback" not in text
