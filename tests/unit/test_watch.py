"""rig.vm.watch with real processes and a real console socket: every wait ends within a second
of a watched process dying, an oops or a hang, naming which; and waiting costs no CPU."""

from __future__ import annotations

import re
import resource
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rig.errors import DeviceModelError, GuestHang, GuestOops, MachineError, RigError, SshLost
from rig.vm import watch as watch_module
from rig.vm.console import SerialConsole
from rig.vm.watch import Watch


class Rig:
    """A console with QEMU's end of its socket, and a watch on it."""

    def __init__(self, tmp: Path, hang_after: float) -> None:
        self.console = SerialConsole(tmp / "console.sock", tmp / "console.log")
        self.qemu_end = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.qemu_end.connect(str(tmp / "console.sock"))
        self.console.accept()
        self.watch = Watch(self.console, hang_after)
        self.watch.on_failure(self.console.abort)

    def say(self, line: str) -> None:
        self.qemu_end.sendall(line.encode() + b"\n")

    def close(self) -> None:
        self.watch.stop()
        self.qemu_end.close()
        self.console.close()


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path, hang_after=60.0)
    yield r
    r.close()


@pytest.fixture
def model() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(["sleep", "60"])
    yield proc
    proc.kill()
    proc.wait()


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def test_a_dying_process_ends_every_wait_within_a_second_without_spinning(
    rig: Rig, model: subprocess.Popen[bytes]
) -> None:
    rig.watch.process("device model", model.pid, lambda: DeviceModelError("model died"))
    rig.watch.start()
    caught: list[BaseException] = []

    def wait_on_console() -> None:
        try:
            rig.console.wait_for(re.compile("never"), timeout=120)
        except RigError as e:
            caught.append(e)

    waiter = threading.Thread(target=wait_on_console)
    waiter.start()
    cpu0, t0 = cpu(), time.monotonic()
    assert rig.watch.wait(1.0) is None  # nothing yet: a quiet second
    assert cpu() - cpu0 < 0.05, "waiting costs CPU"
    model.kill()
    t_kill = time.monotonic()
    failure = rig.watch.wait(5)
    waiter.join(5)
    assert time.monotonic() - t_kill < 1.0
    assert isinstance(failure, DeviceModelError) and str(failure) == "model died"
    assert caught == [failure]  # the console's wait ended with it
    assert cpu() - cpu0 < 0.3 * (time.monotonic() - t0)


def test_an_oops_on_the_console_is_the_verdict(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(watch_module, "OOPS_GRACE", 0.3)
    rig.watch.start()
    rig.say("[    5.0] mlx4_en: eth1: Link Up")
    assert rig.watch.wait(0.5) is None
    rig.say("[    6.9] BUG: kernel NULL pointer dereference, address: 0000000000000008")
    rig.say("[    6.9] #PF: supervisor read access in kernel mode")
    failure = rig.watch.wait(3)
    assert isinstance(failure, GuestOops)
    assert str(failure).startswith(
        "guest kernel oops: BUG: kernel NULL pointer dereference, address: 0000000000000008 "
        f"(full log: {rig.console.log_path})"
    )
    assert "#PF: supervisor read access" in failure.tail


def test_no_console_output_and_no_ssh_answer_is_a_hang(tmp_path: Path) -> None:
    r = Rig(tmp_path, hang_after=1.5)
    try:
        probes: list[float] = []

        def unanswered() -> bool:
            probes.append(time.monotonic())
            time.sleep(5)  # a hung guest never answers; the verdict must not wait for this
            return False

        r.watch.probe_with(unanswered)
        t0 = time.monotonic()
        r.watch.start()
        failure = r.watch.wait(5)
        assert isinstance(failure, GuestHang)
        assert 1.4 < time.monotonic() - t0 < 2.5
        assert str(failure).startswith("guest hung: no console output and no SSH answer for 2 s")
        assert len(probes) == 1 and probes[0] - t0 < 1.0  # one keepalive, at hang_after / 3
    finally:
        r.close()


def test_a_guest_that_answers_or_prints_is_not_hung(tmp_path: Path) -> None:
    r = Rig(tmp_path, hang_after=1.0)
    try:
        answers: list[float] = []

        def answered() -> bool:
            answers.append(time.monotonic())
            return True

        r.watch.probe_with(answered)
        r.watch.start()
        assert r.watch.wait(3.0) is None
        assert len(answers) >= 4  # every hang_after / 3 of console silence
        r.watch.probe_with(lambda: False)  # now it stops answering, but it prints
        for _ in range(6):
            r.say("[ 1.0] still here")
            assert r.watch.wait(0.4) is None
        assert isinstance(r.watch.wait(3.0), GuestHang)
    finally:
        r.close()


def test_a_dropped_connection_is_explained(rig: Rig, model: subprocess.Popen[bytes]) -> None:
    rig.watch.process("QEMU", model.pid, lambda: MachineError("QEMU exited unexpectedly"))
    lost = MachineError("ssh root@127.0.0.1:22: 'x': the connection was lost")
    t0 = time.monotonic()
    explained = rig.watch.explain(lost)
    assert 0.9 < time.monotonic() - t0 < 2.0  # QEMU's exit was given a second to show
    assert isinstance(explained, SshLost)
    assert "still run" in str(explained) and str(rig.console.log_path) in str(explained)
    model.kill()  # the connection dropped because QEMU is exiting: that is the verdict
    explained = rig.watch.explain(lost)
    assert str(explained) == "QEMU exited unexpectedly"
    assert rig.watch.failure is explained
