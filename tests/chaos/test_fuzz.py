"""A bounded, seeded vfio-user fuzz of the real model process (`python -m cx3`).

10^5 hostile messages (tests/chaos/fuzz.py), each step followed by a probe the model must answer
correctly and in time; a message that breaks the stream is followed by a hang-up and a new
connection. Afterwards: the model never died, its descriptor count is where it started (± 2),
its log stayed under its cap with no traceback, a correct client is served, and SIGTERM ends it
with status 0. CHAOS_SEED and CHAOS_MESSAGES change the run; a failure names the seed and step.
"""

from __future__ import annotations

import collections
import os
import random
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from cx3.client import ControlClient
from tests.chaos.fuzz import PROBE_ID, Fuzzer, ReplyStream, Shot, probe
from tests.unit.model_proc import Model, start_model
from vfio_user import protocol as p
from vfio_user.client import Client
from vfio_user.device import CONFIG_REGION

SEED = int(os.environ.get("CHAOS_SEED", "17"))
MESSAGES = int(os.environ.get("CHAOS_MESSAGES", "100000"))
TIMEOUT = 5.0  # a reply later than this is a hang
LOG_CAP = 1 << 20
FD_SLACK = 2
IDENTITY = ((0x00, 4), (0x08, 4), (0x2C, 4))  # ids, revision and class, subsystem ids

pytestmark = pytest.mark.chaos


def _identity(client: Client) -> list[bytes]:
    return [client.read(CONFIG_REGION, offset, size) for offset, size in IDENTITY]


def _state(model: Model) -> str:
    """Whether the model died (a process whose sockets just closed may not be reaped yet)."""
    try:
        return f"the model exited with status {model.proc.wait(1)}"
    except subprocess.TimeoutExpired:
        return "the model is alive"


def _send(sock: socket.socket, shot: Shot) -> None:
    try:
        sent = sock.sendmsg([shot.data], [p.fds_ancillary(shot.fds)] if shot.fds else [])
        if sent < len(shot.data):
            sock.sendall(shot.data[sent:])
    except (BrokenPipeError, ConnectionResetError):
        pass  # the model hung up on an earlier message of this step: the probe will say
    finally:
        p.close_fds(shot.fds)


class Session:
    """The fuzzing client's connection, opened again after each hang-up."""

    def __init__(self, model: Model, control: ControlClient) -> None:
        self._model = model
        self._control = control
        self.hangups = 0
        self._connect()

    def _connect(self) -> None:
        for _ in range(20):
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(TIMEOUT)
            self.sock.connect(str(self._model.socket))
            self.replies = ReplyStream(self.sock)
            try:
                self.sock.sendall(probe())
                header, _ = self.replies.next()
                assert header[0] == PROBE_ID
                return
            except ConnectionError:  # refused: the model had not yet seen the last one go
                self.sock.close()
                self._control.ping()  # it takes events in order: after this, it has
        raise AssertionError("the model refused 20 connections in a row")

    def hang_up(self) -> None:
        self.sock.close()
        self.hangups += 1
        self._control.ping()  # the model has seen the hang-up once this is answered
        self._connect()

    def close(self) -> None:
        self.sock.close()
        self._control.ping()


def test_fuzz_the_vfio_user_server(
    tmp_path: Path, record_testsuite_property: Callable[[str, object], None]
) -> None:
    model = start_model(tmp_path, "--log-max-bytes", str(LOG_CAP))
    control = ControlClient(model.control, timeout=TIMEOUT)
    fuzzer = Fuzzer(random.Random(SEED))
    kinds: collections.Counter[str] = collections.Counter()
    errors = 0
    try:
        with Client(model.socket) as client:
            client.version()
            identity = _identity(client)
        control.ping()
        fds_before = model.fd_count()
        session = Session(model, control)
        sent = step = 0
        t0 = time.monotonic()
        while sent < MESSAGES:
            step += 1
            where = f"seed {SEED}, step {step}, message {sent}"
            shots = fuzzer.step()
            commands = {}  # message id -> command
            for shot in shots:
                msg_id, command = p.HEADER.unpack_from(shot.data.ljust(16, b"\0"))[:2]
                commands[msg_id] = command
                _send(session.sock, shot)
                kinds[shot.kind] += 1
            sent += len(shots)
            if shots[-1].breaks:
                session.hang_up()
                continue
            session.sock.sendall(probe())
            while True:  # the replies to this step, then the probe's
                try:
                    (msg_id, command, _, flags, error), body = session.replies.next()
                except (ConnectionError, TimeoutError) as e:
                    raise AssertionError(f"{where}: no answer ({e}); {_state(model)}") from e
                assert flags & p.Flags.TYPE_MASK == p.Flags.REPLY, where
                if msg_id == PROBE_ID:
                    assert not flags & p.Flags.ERROR and body[16:] == identity[0], where
                    break
                assert commands.get(msg_id) == command, f"{where}: a reply to no message"
                if flags & p.Flags.ERROR:
                    errors += 1
                    assert error, where
            if step % 512 == 0:
                control.ping()
                assert model.proc.poll() is None, where
        elapsed = time.monotonic() - t0
        session.close()
        fuzzer.close()
        fds_after = model.fd_count()
        with Client(model.socket) as client:  # a correct client, served as before
            client.version()
            assert _identity(client) == identity
    finally:
        control.close()
        status = model.stop()
    logs = [model.log, model.log.with_name(model.log.name + ".1")]
    text = "".join(log.read_text() for log in logs if log.exists())
    figures = {
        "seed": SEED,
        "messages": sent,
        "seconds": round(elapsed, 1),
        "messages_per_second": round(sent / elapsed),
        "error_replies": errors,
        "hangups": session.hangups,
        "fds_before": fds_before,
        "fds_after": fds_after,
        "device_errors": text.count("device error"),
        "log_bytes": sum(log.stat().st_size for log in logs if log.exists()),
        "kinds": dict(kinds),
    }
    for name, value in figures.items():
        record_testsuite_property(name, value)
    print(f"\nchaos: {figures}")
    assert status == 0, "the model did not exit 0 on SIGTERM"
    assert "Traceback" not in text
    assert abs(fds_after - fds_before) <= FD_SLACK, figures
    assert all(log.stat().st_size <= LOG_CAP for log in logs if log.exists())
