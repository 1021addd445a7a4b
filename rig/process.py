"""The processes and temporary directories a rig owns: they never outlive it, and another
process is never taken for one of them.

* `die_with_parent()` is the command prefix QEMU and the device model run under: the kernel
  sends them SIGKILL when the rig's thread that started them dies, however it dies (SIGKILL
  of the rig included), so neither lingers under PID 1.
* `Identity` is a pid plus the process's start time (/proc/PID/stat, in clock ticks since
  boot): a pid the kernel has since given to another process has another start time. It is
  signalled through a pidfd opened before the check, so the check cannot go stale.
* `owned_tempdir()` makes a temporary directory with an `owner` file naming its process;
  `sweep_tempdirs()` removes those whose owner is dead (a rig killed outright leaves its
  sockets behind: the next rig clears them). A directory without that file is not touched.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import shutil
import signal
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

# The rig's temporary directories: Rig's (device sockets, the per-rig SSH key), Machine's
# (QMP and console sockets). Both live under tempfile.gettempdir(), as sockets need short paths.
TEMPDIR_PREFIXES = ("rig-run-", "rig-vm-")
OWNER_FILE = "owner"


def die_with_parent() -> Sequence[str]:
    """setpriv --pdeathsig KILL: the child gets SIGKILL if the rig dies without tearing it
    down. It is tied to the launching thread: launch from a thread that outlives the child."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL", "--"] if setpriv else []


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat's fields after the command name (which may hold blanks), or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return text[text.rindex(")") + 2 :].split()


@dataclass(frozen=True)
class Identity:
    """One process, told apart from any later process with the same pid."""

    pid: int
    start: int  # /proc/PID/stat field 22: clock ticks after boot when it started

    @classmethod
    def of(cls, pid: int) -> Identity | None:
        """The process now running as `pid`, or None if there is none."""
        fields = _stat_fields(pid)
        return None if fields is None else cls(pid, int(fields[19]))

    @classmethod
    def me(cls) -> Identity:
        me = cls.of(os.getpid())
        assert me is not None
        return me

    def alive(self) -> bool:
        """Whether this very process still runs (not a zombie, not another with its pid)."""
        fields = _stat_fields(self.pid)
        return fields is not None and int(fields[19]) == self.start and fields[0] != "Z"

    def state(self) -> str:
        """Its state letter as /proc shows it ("T" stopped, "Z" zombie, ...), or "" if gone."""
        fields = _stat_fields(self.pid)
        return fields[0] if fields is not None and int(fields[19]) == self.start else ""

    def command(self) -> str:
        """Its command line, for messages ("" if it is gone)."""
        try:
            raw = Path(f"/proc/{self.pid}/cmdline").read_bytes()
        except OSError:
            return ""
        return " ".join(w.decode(errors="replace") for w in raw.split(b"\0") if w)

    def pidfd(self) -> int | None:
        """A pidfd on this process (close it), or None if it is gone: the pidfd is opened
        first and the start time checked after, so it cannot name a later process."""
        try:
            fd = os.pidfd_open(self.pid)
        except ProcessLookupError:
            return None
        if not self.alive():
            os.close(fd)
            return None
        return fd

    def signal(self, signum: int) -> bool:
        """Send `signum` to this process if it still runs; whether it was sent."""
        fd = self.pidfd()
        if fd is None:
            return False
        try:
            signal.pidfd_send_signal(fd, signum)
        except ProcessLookupError:
            return False
        finally:
            os.close(fd)
        return True

    def wait_gone(self, timeout: float) -> bool:
        """Wait (on its pidfd: no polling) until it has exited; whether it has."""
        fd = self.pidfd()
        if fd is None:
            return True
        try:
            return bool(select.select([fd], [], [], timeout)[0]) or not self.alive()
        finally:
            os.close(fd)

    def end(self, grace: float = 5.0) -> bool:
        """SIGTERM, then SIGKILL after `grace` s; whether it was still running."""
        if not self.signal(signal.SIGTERM):
            return False
        if not self.wait_gone(grace):
            self.signal(signal.SIGKILL)
            self.wait_gone(grace)
        return True


def owned_tempdir(prefix: str) -> Path:
    """A private temporary directory (0700) whose `owner` file names this process."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    me = Identity.me()
    (path / OWNER_FILE).write_text(f"{me.pid} {me.start}\n")
    return path


def tempdir_owner(path: Path) -> Identity | None:
    """The process named in `path`'s owner file, or None if it has no readable one."""
    try:
        pid, start = (path / OWNER_FILE).read_text().split()
        return Identity(int(pid), int(start))
    except (OSError, ValueError):
        return None


def sweep_tempdirs(prefixes: Sequence[str] = TEMPDIR_PREFIXES) -> list[Path]:
    """Remove this user's rig temporary directories whose owner process is dead; those
    removed."""
    removed = []
    root = Path(tempfile.gettempdir())
    for prefix in prefixes:
        for path in root.glob(f"{prefix}*"):
            with contextlib.suppress(OSError):
                if path.stat().st_uid != os.getuid():
                    continue
            owner = tempdir_owner(path)
            if owner is not None and not owner.alive():
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
    if removed:
        logger.info(
            f"removed {len(removed)} temporary director{'y' if len(removed) == 1 else 'ies'} "
            f"left by dead rigs: {', '.join(map(str, removed))}"
        )
    return removed
