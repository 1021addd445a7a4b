"""The device model in its own process, so a crash there never takes the orchestrator along.

The process is `python -m cx3 --socket S --control C`; it prints one line "ready" on stdout
once both sockets listen (QEMU must find the vfio-user socket listening when it starts).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

from cx3.client import ControlClient
from rig.errors import DeviceModelError, tail


class DeviceModel:
    """One emulated ConnectX-3: its vfio-user socket, control socket and log."""

    def __init__(self, rundir: Path, logdir: Path, name: str = "cx3") -> None:
        self.socket = rundir / f"{name}.sock"
        self.control_socket = rundir / f"{name}.ctl"
        self.log = logdir / f"{name}-device.log"
        self.name = name
        self.proc: subprocess.Popen[bytes] | None = None
        self._client: ControlClient | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self, timeout: float = 30.0) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable,
            "-m",
            "cx3",
            "--socket",
            str(self.socket),
            "--control",
            str(self.control_socket),
            "--log",
            str(self.log),
        ]
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C goes to the rig, which then stops us in order
        )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        line = b""
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line or line.strip() == b"ready":
                break
        if line.strip() != b"ready":
            self.proc.kill()
            rest = self.proc.communicate()[0].decode(errors="replace")
            raise DeviceModelError(
                f"device model did not start: {' '.join(cmd)}",
                self.log,
                (line.decode(errors="replace") + rest) or tail(self.log),
            )
        # Nothing more is printed on stdout; drop the pipe so the child never blocks on it.
        self.proc.stdout.close()

    @property
    def control(self) -> ControlClient:
        self.check_alive()
        if self._client is None:
            self._client = ControlClient(self.control_socket)
        return self._client

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check_alive(self) -> None:
        if self.proc is None:
            raise DeviceModelError("device model not started")
        rc = self.proc.poll()
        if rc is not None:
            raise DeviceModelError(
                f"device model exited unexpectedly (status {rc})", self.log, tail(self.log)
            )

    def stop(self, timeout: float = 5.0) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        for path in (self.socket, self.control_socket):
            path.unlink(missing_ok=True)

    def __enter__(self) -> DeviceModel:
        self.start()
        return self

    def __exit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
