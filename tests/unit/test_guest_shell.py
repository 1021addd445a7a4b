"""GuestSsh.run through one shell per connection (rig.vm.shell), against a real SSH server
(paramiko's, in this process) that runs each exec request with a real bash, as the guest's
sshd runs it with root's login shell."""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import paramiko
import pytest

from rig.errors import MachineError, SshLost, UsageError
from rig.vm import shell
from rig.vm.ssh import GuestSsh
from tests.unit.sshd import sshd


@dataclass
class Bash:
    """Runs each exec request as `bash -c COMMAND`, wired to its channel."""

    execs: list[str] = field(default_factory=list)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def __call__(self, chan: paramiko.Channel, command: str) -> None:
        self.execs.append(command)
        proc = subprocess.Popen(
            ["bash", "-c", command],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={"PATH": os.environ["PATH"], "SHELL": "/bin/bash"},
        )
        self.procs.append(proc)
        assert proc.stdin and proc.stdout and proc.stderr
        out = threading.Thread(target=_pump, args=(proc.stdout.fileno(), chan.sendall))
        err = threading.Thread(target=_pump, args=(proc.stderr.fileno(), chan.sendall_stderr))
        feed = threading.Thread(target=_feed, args=(chan, proc.stdin), daemon=True)

        def finish() -> None:
            out.join()
            err.join()
            if (status := proc.wait()) >= 0:  # sshd sends a signal's death as exit-signal
                chan.send_exit_status(status)
            # EOF, and the client closes: a close from here can overtake the exec request's
            # reply (paramiko sends it after this handler returns) and fail exec_command.
            chan.shutdown_write()

        for t in (out, err, feed):
            t.start()
        threading.Thread(target=finish, daemon=True).start()


def _pump(fd: int, send: Callable[[bytes], object]) -> None:
    while data := os.read(fd, 65536):
        try:
            send(data)
        except OSError:  # the channel closed under it
            return


def _feed(chan: paramiko.Channel, stdin: IO[bytes]) -> None:
    with contextlib.suppress(OSError, ValueError):
        while data := chan.recv(65536):
            stdin.write(data)
            stdin.flush()
    with contextlib.suppress(OSError):
        stdin.close()


@dataclass
class Guest:
    ssh: GuestSsh
    bash: Bash
    transport: paramiko.Transport  # the server's end: close() it to drop the connection


@pytest.fixture
def guest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Guest]:
    monkeypatch.delenv(shell.ENV, raising=False)
    bash = Bash()
    with sshd(tmp_path, bash) as served:
        yield Guest(served.ssh, bash, served.transport)
    for proc in bash.procs:
        proc.kill()
        proc.wait()


def test_commands_share_one_shell_and_keep_their_status_and_streams(guest: Guest) -> None:
    res = guest.ssh.run("echo out; echo err >&2; exit 3")
    assert (res.status, res.stdout, res.stderr) == (3, "out\n", "err\n")
    res = guest.ssh.run("printf 'no newline'")
    assert (res.status, res.stdout, res.stderr) == (0, "no newline", "")
    assert guest.bash.execs == [shell.SHELL]  # one exec channel: the shell's


def test_a_command_changes_nothing_for_the_next(guest: Guest, tmp_path: Path) -> None:
    guest.ssh.run(f"cd {tmp_path}; x=1; set -e; exit 0")
    res = guest.ssh.run('pwd; echo "${x:-unset}"; false; echo "after false"')
    assert res.stdout.splitlines() == [os.getcwd(), "unset", "after false"]
    assert len(guest.bash.execs) == 1


def test_bad_syntax_fails_that_command_only(guest: Guest) -> None:
    res = guest.ssh.run("echo 'unterminated")
    assert res.status == 2 and "unexpected EOF" in res.stderr
    assert guest.ssh.run("echo fine").stdout == "fine\n"
    assert len(guest.bash.execs) == 1


def test_stdin_is_empty(guest: Guest) -> None:
    res = guest.ssh.run("cat; echo done", timeout=5)
    assert (res.status, res.stdout) == (0, "done\n")


def test_megabytes_of_output_arrive_whole(guest: Guest) -> None:
    res = guest.ssh.run("head -c 5000000 /dev/zero | tr '\\0' x; echo; seq 3 >&2")
    assert res.stdout == "x" * 5_000_000 + "\n" and res.stderr == "1\n2\n3\n"


def test_a_timeout_names_the_command_and_the_next_gets_a_new_shell(guest: Guest) -> None:
    t0 = time.monotonic()
    with pytest.raises(MachineError, match=r"'sleep 30' still running after 1 s"):
        guest.ssh.run("sleep 30", timeout=1)
    assert time.monotonic() - t0 < 3
    assert guest.ssh.run("echo again").stdout == "again\n"
    assert guest.bash.execs == [shell.SHELL, shell.SHELL]


def test_a_command_that_kills_the_shell_fails_alone(guest: Guest) -> None:
    with pytest.raises(MachineError, match="the command shell ended"):
        guest.ssh.run("kill -9 $$", timeout=5)
    assert guest.ssh.run("echo alive").stdout == "alive\n"
    assert guest.bash.execs == [shell.SHELL, shell.SHELL]


def test_a_command_in_the_shell_when_the_connection_drops_is_lost(guest: Guest) -> None:
    """The watch's verdict (on_lost), as for a command on its own channel."""
    guest.ssh.on_lost = lambda lost: SshLost(f"the verdict on: {lost}")
    guest.ssh.run("true")
    threading.Timer(0.5, guest.transport.close).start()
    t0 = time.monotonic()
    with pytest.raises(SshLost, match="'sleep 100': the connection was lost"):
        guest.ssh.run("sleep 100", timeout=60)
    assert time.monotonic() - t0 < 1.5


def test_while_one_thread_holds_the_shell_another_takes_an_exec_channel(
    guest: Guest, tmp_path: Path
) -> None:
    started = tmp_path / "started"
    os.mkfifo(started)
    slow = threading.Thread(target=guest.ssh.run, args=(f"echo > {started}; sleep 1",))
    slow.start()
    with started.open() as fifo:  # opens once the slow command, in the shell, writes it
        fifo.read()
    res = guest.ssh.run("echo beside")
    slow.join()
    assert res.stdout == "beside\n"
    assert guest.bash.execs == [shell.SHELL, "echo beside"]


def test_streaming_keeps_an_exec_channel(guest: Guest) -> None:
    got: list[bytes] = []
    res = guest.ssh.run("echo streamed", on_stdout=got.append)
    assert res.stdout == "streamed\n" and b"".join(got) == b"streamed\n"
    assert guest.bash.execs == ["echo streamed"]


def test_off_gives_every_command_its_own_channel(
    guest: Guest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(shell.ENV, "off")
    (tmp_path / "off").mkdir()
    bash = Bash()
    with sshd(tmp_path / "off", bash) as served:
        assert served.ssh.run("echo 1").stdout == "1\n"
        assert served.ssh.run("echo 2").stdout == "2\n"
    assert bash.execs == ["echo 1", "echo 2"]
    monkeypatch.setenv(shell.ENV, "sometimes")
    with pytest.raises(UsageError, match=r"\$RIG_GUEST_SHELL 'sometimes': choose one of on, off"):
        shell.enabled()


def test_a_marker_and_status_split_across_packets_are_found() -> None:
    """The channel hands over what it has: a marker can arrive a byte at a time."""
    stdout = shell._Stream(b"\n__rig_t_1 ", status=True)
    stream = b"out\n__rig_t_0 1\nstill out\n__rig_t_1 42\n"
    for i in range(len(stream)):
        assert not stdout.ended, stream[:i]
        stdout.feed(stream[i : i + 1])
    assert stdout.ended and stdout.status() == 42
    assert stdout.output() == b"out\n__rig_t_0 1\nstill out"
