"""GuestSsh when the connection drops under a wait, against a real SSH server (paramiko's, in
this process): the wait ends at once with `on_lost`'s verdict, without spinning. Before, a
Background.readline on a dropped connection spun at 100% CPU until its timeout."""

from __future__ import annotations

import queue
import resource
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paramiko
import pytest

from rig.errors import MachineError, RigError, SshLost
from rig.vm.ssh import GuestSsh
from tests.unit.sshd import sshd


@dataclass
class Guest:
    ssh: GuestSsh
    commands: queue.Queue[tuple[paramiko.Channel, str]]
    transport: paramiko.Transport  # the server's end: close() it to drop the connection

    def command(self) -> tuple[paramiko.Channel, str]:
        return self.commands.get(timeout=5)


@pytest.fixture
def guest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Guest]:
    # Each exec request is answered by the test itself: no shell to keep (rig.vm.shell).
    monkeypatch.setenv("RIG_GUEST_SHELL", "off")
    commands: queue.Queue[tuple[paramiko.Channel, str]] = queue.Queue()
    with sshd(tmp_path, lambda chan, command: commands.put((chan, command))) as served:
        yield Guest(served.ssh, commands, served.transport)


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def test_a_background_read_ends_when_the_connection_drops(guest: Guest) -> None:
    bg = guest.ssh.start("python3 watcher.py")
    chan, command = guest.command()
    assert command == "python3 watcher.py"
    chan.sendall(b"listening\n")
    assert bg.readline(5) == "listening"
    threading.Timer(0.5, guest.transport.close).start()  # QEMU dies: its socket closes
    cpu0, t0 = cpu(), time.monotonic()
    with pytest.raises(MachineError, match="the connection was lost") as caught:
        bg.readline(10)
    waited = time.monotonic() - t0
    assert 0.4 < waited < 1.5, waited
    assert cpu() - cpu0 < 0.2 * waited, "the wait spun"
    assert "'python3 watcher.py'" in str(caught.value)


def test_the_verdict_comes_from_on_lost(guest: Guest) -> None:
    verdicts: list[MachineError] = []

    def explain(lost: MachineError) -> RigError:
        verdicts.append(lost)
        return SshLost("lost the SSH connection to the guest")

    guest.ssh.on_lost = explain
    guest.transport.close()
    time.sleep(0.2)  # the client's transport thread sees the socket close
    with pytest.raises(SshLost):
        guest.ssh.run("dmesg", timeout=5)
    with pytest.raises(SshLost):
        guest.ssh.start("true")
    assert len(verdicts) == 2 and "'dmesg'" in str(verdicts[0])


def test_a_command_running_when_the_connection_drops_is_lost(guest: Guest) -> None:
    threading.Timer(0.5, guest.transport.close).start()
    t0 = time.monotonic()
    with pytest.raises(MachineError, match="the connection was lost"):
        guest.ssh.run("sleep 100", timeout=60)
    assert time.monotonic() - t0 < 1.5


def test_a_command_killed_by_a_signal_is_not_a_lost_connection(guest: Guest) -> None:
    """sshd sends exit-signal (which paramiko does not keep), then EOF and close."""
    done: list[BaseException] = []

    def run() -> None:
        try:
            guest.ssh.run("sleep 100", timeout=10)
        except MachineError as e:
            done.append(e)

    runner = threading.Thread(target=run)
    runner.start()
    chan, _ = guest.command()
    chan.shutdown_write()  # EOF
    chan.close()
    runner.join(5)
    assert len(done) == 1 and "killed by a signal" in str(done[0]), done
    bg = guest.ssh.start("echo")
    chan, _ = guest.command()
    chan.sendall(b"hi\n")
    chan.send_exit_status(0)
    chan.shutdown_write()
    chan.close()
    assert bg.readline(5) == "hi" and bg.wait(5) == 0


def test_stderr_does_not_make_a_read_spin(guest: Guest) -> None:
    """A channel's fileno is readable on stderr data too: a reader that leaves it there spun
    until the next stdout line."""
    bg = guest.ssh.start("agent")
    chan, _ = guest.command()
    chan.sendall_stderr(b"warning: slow start\n")
    threading.Timer(1.0, chan.sendall, (b"ready\n",)).start()
    cpu0, t0 = cpu(), time.monotonic()
    assert bg.readline(5) == "ready"
    assert cpu() - cpu0 < 0.2 * (time.monotonic() - t0), "the read spun on stderr"
    assert bg.stderr() == "warning: slow start\n"
