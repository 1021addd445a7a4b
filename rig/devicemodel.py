"""The device model in its own process, so a crash there never takes the orchestrator along.

The process is `python -m cx3 --socket S --control C`; it prints one line "ready" on stdout
once both sockets listen (QEMU must find the vfio-user socket listening when it starts). It
exits 0 on SIGTERM and in no other way: any other end is a crash, and `stop` says so. It runs
with PR_SET_PDEATHSIG (rig.process), so it dies with the rig however the rig dies. A control
request that finds the socket closed says whether the model died (`exit_error`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from cx3.client import ControlClient
from cx3.wire import Reply
from rig.cpus import on_cpu
from rig.errors import DeviceModelError, tail
from rig.process import die_with_parent

EXIT_GRACE = 1.0  # s a failed control request gives the model to be seen exiting


class DeviceModel:
    """One emulated ConnectX-3: its vfio-user socket, control socket and log."""

    def __init__(
        self,
        rundir: Path,
        logdir: Path,
        name: str = "cx3",
        inline_work: bool = False,
        cpu: int | None = None,
    ) -> None:
        """`inline_work`: the model's --inline-work (a doorbell's work done before its write
        is answered), for a guest on the warped clock (rig.vm.clock.lockstep). `cpu`: the
        one it runs on, its QEMU's (rig.cpus)."""
        self.inline_work = inline_work
        self.cpu = cpu
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
            *(["--inline-work"] if self.inline_work else []),
        ]
        self.proc = proc = subprocess.Popen(
            [*die_with_parent(), *on_cpu(self.cpu), *cmd],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C goes to the rig, which then stops us in order
        )
        assert proc.stdout is not None
        deadline = time.monotonic() + timeout
        line = b""
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line or line.strip() == b"ready":
                break
        if line.strip() != b"ready":
            proc.kill()
            rest = proc.communicate()[0].decode(errors="replace")
            self.proc = None  # reported here: `stop` has nothing left to say
            raise DeviceModelError(
                f"device model did not start: {' '.join(cmd)}",
                self.log,
                (line.decode(errors="replace") + rest) or tail(self.log),
            )
        # Nothing more is printed on stdout; drop the pipe so the child never blocks on it.
        proc.stdout.close()

    @property
    def control(self) -> ControlClient:
        self.check_alive()
        if self._client is None:
            try:
                self._client = _Control(self, self.control_socket)
            except OSError as e:
                raise self.lost(f"connecting to {self.control_socket}: {e}") from e
        return self._client

    def lost(self, what: str) -> DeviceModelError:
        """The error for a control request that failed on the socket: the model's exit if
        it exited (give it EXIT_GRACE s), else what failed."""
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(EXIT_GRACE)
        if (error := self.exit_error()) is not None:
            return error
        return DeviceModelError(f"device model control socket: {what}", self.log, tail(self.log))

    def exit_error(self) -> DeviceModelError | None:
        """DeviceModelError saying how the model ended, if it has ended."""
        rc = self.proc.poll() if self.proc is not None else None
        if rc is None:
            return None
        return DeviceModelError(
            f"device model exited unexpectedly ({_status(rc)})", self.log, tail(self.log)
        )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check_alive(self) -> None:
        if self.proc is None:
            raise DeviceModelError("device model not started")
        if (error := self.exit_error()) is not None:
            raise error

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, SIGKILL after `timeout`; clean up always. Raises DeviceModelError once if
        the model had crashed or did not stop cleanly (a crash must not pass for a teardown)."""
        if self._client is not None:
            self._client.close()
            self._client = None
        proc, self.proc = self.proc, None
        if proc is None:
            return
        problem = ""
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                problem = f"did not stop within {timeout:g} s of SIGTERM; killed"
        for path in (self.socket, self.control_socket):
            path.unlink(missing_ok=True)
        if not problem and proc.returncode != 0:
            problem = f"exited with {_status(proc.returncode)}"
        if problem:
            raise DeviceModelError(f"device model {problem}", self.log, tail(self.log))

    def __enter__(self) -> DeviceModel:
        self.start()
        return self

    def __exit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class _Control(ControlClient):
    """The model's control client, whose socket failures say what became of the model."""

    def __init__(self, model: DeviceModel, path: Path) -> None:
        self._model = model
        super().__init__(path)

    def call(self, op: str, **args: Any) -> Reply:
        try:
            return super().call(op, **args)
        except OSError as e:  # ConnectionError, a timeout: the model died, or hangs
            raise self._model.lost(f"{op}: {type(e).__name__}: {e}") from e


def _status(returncode: int) -> str:
    if returncode < 0:
        return f"signal {signal.Signals(-returncode).name}"
    return f"status {returncode}"
