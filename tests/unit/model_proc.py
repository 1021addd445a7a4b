"""`python -m cx3` as the rig runs it, in a child process, for tests that need the real one."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import cx3


@dataclass
class Model:
    proc: subprocess.Popen[bytes]
    socket: Path
    control: Path
    log: Path

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, as rig/devicemodel.py stops it; the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def stop_cleanly(self) -> None:
        """Stop it; it must exit 0, say nothing of a traceback and leave no socket behind."""
        assert self.stop() == 0, self.log.read_text()
        assert "Traceback" not in self.log.read_text()
        assert not self.socket.exists() and not self.control.exists()

    def fd_count(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))


@pytest.fixture
def model(tmp_path: Path) -> Iterator[Model]:
    """The model in its own process, stopped cleanly at the end of the test."""
    m = start_model(tmp_path)
    try:
        yield m
    finally:
        m.stop_cleanly()


def start_model(directory: Path, *args: str, max_fds: int | None = None) -> Model:
    """Start the model with its sockets and log in `directory`; return once it says "ready".

    `max_fds` lowers its RLIMIT_NOFILE, to run it out of file descriptors."""
    sock, ctl, log = directory / "cx3.sock", directory / "cx3.ctl", directory / "cx3.log"
    src = str(Path(cx3.__file__).parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "cx3", "--socket", str(sock), "--control", str(ctl)]
    limit: Callable[[], None] | None = None
    if max_fds is not None:
        n = max_fds

        def limit() -> None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))

    proc = subprocess.Popen(
        [*cmd, "--log", str(log), *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        env=env,
        preexec_fn=limit,  # only setrlimit, between fork and exec
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    proc.stdout.close()  # as rig/devicemodel.py does: the model must not need it any more
    assert line == b"ready\n", f"model did not start: {line!r}"
    return Model(proc, sock, ctl, log)
