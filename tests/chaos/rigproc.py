"""A `rig` command run as CI runs it — its own process, its own temporary directory — for the
chaos tests to wait on its phases, hit it or its children, and look for what it left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from rig.process import Identity

CHILDREN = {"QEMU": "qemu-system", "device model": "-m cx3"}


class RigProcess:
    def __init__(self, tmp: Path, *args: str) -> None:
        """Run `rig ARGS` with TMPDIR=tmp/tmp: its sockets and temp dirs go there and nowhere
        else, so what is left of them is what is in there."""
        self.tempdir = tmp / "tmp"
        self.tempdir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, TMPDIR=str(self.tempdir), PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rig", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            text=True,
        )
        self.identity = Identity.of(self.proc.pid)
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self.lines.append("")  # end of output
            self._cond.notify_all()

    def await_line(self, text: str, timeout: float = 300) -> str:
        """Block until the rig prints a line holding `text` (an event: no polling)."""
        with self._cond:
            found = self._cond.wait_for(
                lambda: any(text in ln for ln in self.lines) or self.lines[-1:] == [""],
                timeout,
            )
            match = [ln for ln in self.lines if text in ln]
        assert found and match, f"no {text!r} from the rig: {self.output()}"
        return match[0]

    def children(self, timeout: float = 60) -> dict[str, Identity]:
        """QEMU's and the device model's identities once both run. Another process's fork
        gives us no event, so /proc is looked at every 50 ms."""
        deadline = time.monotonic() + timeout
        while True:
            found = {}
            for entry in Path("/proc").iterdir():
                if not entry.name.isdigit():
                    continue
                try:
                    stat = (entry / "stat").read_text()
                    cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                except OSError:
                    continue
                if int(stat[stat.rindex(")") + 2 :].split()[1]) != self.proc.pid:
                    continue
                for what, marker in CHILDREN.items():
                    if marker in cmdline and (i := Identity.of(int(entry.name))) is not None:
                        found[what] = i
            if len(found) == len(CHILDREN):
                return found
            assert time.monotonic() < deadline, f"children not found: {found}"
            time.sleep(0.05)

    def send(self, signum: int) -> None:
        assert self.identity is not None and self.identity.signal(signum)

    def finish(self, timeout: float = 120) -> int:
        try:
            status = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        self._reader.join(5)
        return status

    def output(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    def error_lines(self) -> list[str]:
        """Its `rig: error: ...` lines and its last `rig: ... by SIG...` line."""
        return [ln for ln in self.lines if ln.startswith("rig: error:") or " by SIG" in ln]

    def cpu(self) -> float:
        """Its CPU time so far (s)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def leftovers(self) -> list[str]:
        """What of this rig outlives it: processes whose command line names its temporary
        directory (QEMU's and the model's sockets are in there), and the directory's content."""
        left = [str(p) for p in self.tempdir.iterdir()]
        marker = str(self.tempdir).encode()
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    cmdline = (entry / "cmdline").read_bytes()
                    stat = (entry / "stat").read_text()
                except OSError:
                    continue
                if marker in cmdline and stat.rsplit(")", 1)[1].split()[0] != "Z":
                    words = cmdline.replace(b"\0", b" ").decode(errors="replace")
                    left.append(f"process {entry.name}: {words}")
        return left

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
