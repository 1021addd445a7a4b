"""rig.process against real processes: the identity check, signalling, pdeathsig, temp dirs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rig.process import Identity, die_with_parent, owned_tempdir, sweep_tempdirs, tempdir_owner


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(["sleep", "60"])
    yield proc
    proc.kill()
    proc.wait()


def test_an_identity_names_one_process_not_its_pid(sleeper: subprocess.Popen[bytes]) -> None:
    me = Identity.of(sleeper.pid)
    assert me is not None and me.alive() and me.state() in ("S", "R")
    assert "sleep 60" in me.command()
    # The same pid with another start time: a process the kernel gave that pid later.
    other = Identity(sleeper.pid, me.start + 1)
    assert not other.alive()
    assert other.signal(signal.SIGTERM) is False
    assert sleeper.poll() is None  # never signalled
    assert me.signal(signal.SIGTERM) is True
    assert sleeper.wait(5) == -signal.SIGTERM


def test_a_zombie_is_not_alive_and_wait_gone_does_not_poll(
    sleeper: subprocess.Popen[bytes],
) -> None:
    me = Identity.of(sleeper.pid)
    assert me is not None
    t0 = time.monotonic()
    assert me.wait_gone(0.3) is False  # still running: the whole timeout
    assert time.monotonic() - t0 >= 0.3
    os.kill(sleeper.pid, signal.SIGKILL)
    assert me.wait_gone(5)  # a zombie until reaped: gone all the same
    assert not me.alive()
    assert Identity.of(2**22 + 1) is None  # above pid_max: no such process


def test_end_takes_sigterm_then_sigkill() -> None:
    stubborn = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import signal,time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
            "print('ready', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
    )
    assert stubborn.stdout is not None and stubborn.stdout.readline() == b"ready\n"
    me = Identity.of(stubborn.pid)
    assert me is not None
    assert me.end(grace=0.3) is True
    assert stubborn.wait(5) == -signal.SIGKILL
    assert me.end() is False  # gone already
    stubborn.stdout.close()


def test_children_under_die_with_parent_die_with_a_killed_parent() -> None:
    """The rig's QEMU and device model run like this grandchild: SIGKILL the parent (the
    rig) and the kernel kills the child."""
    assert die_with_parent(), "setpriv is missing"
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import subprocess,sys; p = subprocess.Popen(sys.argv[1:]); print(p.pid, flush=True);"
            " p.wait()",
            *die_with_parent(),
            "sleep",
            "60",
        ],
        stdout=subprocess.PIPE,
    )
    assert parent.stdout is not None
    child = Identity.of(int(parent.stdout.readline()))
    assert child is not None and child.alive()
    deadline = time.monotonic() + 5
    while child.command() != "sleep 60":  # setpriv has set the signal once it runs sleep
        assert time.monotonic() < deadline, child.command()
        time.sleep(0.01)
    parent.kill()
    parent.wait()
    parent.stdout.close()
    assert child.wait_gone(5), "the child outlived its parent"


def test_sweep_removes_only_dead_owners_dirs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    mine = owned_tempdir("rig-run-")
    assert tempdir_owner(mine) == Identity.me()
    assert mine.stat().st_mode & 0o777 == 0o700
    dead_child = subprocess.Popen(["true"])
    dead_child.wait()
    dead = tmp_path / "rig-vm-dead"
    dead.mkdir()
    (dead / "owner").write_text(f"{dead_child.pid} 1\n")
    foreign = tmp_path / "rig-run-foreign"  # no owner file: another rig's, of an older version
    foreign.mkdir()
    other = tmp_path / "other-dir"
    other.mkdir()
    (other / "owner").write_text(f"{dead_child.pid} 1\n")
    assert sweep_tempdirs() == [dead]
    assert mine.is_dir() and foreign.is_dir() and other.is_dir() and not dead.exists()
