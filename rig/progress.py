"""Progress for long steps: one line per phase, full tool output in a log file.

Library code reports through `logging` (logger "rig" and below); the CLI shows INFO and up on
stderr as "rig: ..." (rig.cli.main), pytest captures it like any log.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from rig.errors import ProvisionError, tail

logger = logging.getLogger(__name__)


_cut_short = ""  # the innermost phase an exception ended since the last phase began


@contextmanager
def step(what: str) -> Iterator[None]:
    """Announce a phase and how long it took."""
    global _cut_short
    logger.info("%s ...", what)
    t0 = time.monotonic()
    _cut_short = ""
    try:
        yield
    except BaseException:
        _cut_short = _cut_short or what
        raise
    logger.info("%s: done in %.1f s", what, time.monotonic() - t0)


def step_cut_short() -> str:
    """The phase the exception being handled ended ("" if it came outside every phase)."""
    return _cut_short


def run_logged(
    cmd: Sequence[str | os.PathLike[str]],
    log: Path,
    what: str,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
) -> None:
    """Run a tool with its output appended to `log`; show a heartbeat with its latest line.

    On failure, or when it runs past `timeout` seconds (then it is killed with everything it
    started), raise ProvisionError naming the step, the log and its tail.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    full_env = dict(os.environ, **(env or {}))
    with log.open("ab") as out:
        out.write(f"\n$ {' '.join(map(str, cmd))}\n".encode())
        out.flush()
        try:
            proc = subprocess.Popen(
                [str(c) for c in cmd],
                cwd=cwd,
                env=full_env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                # With a deadline, a group of its own: its children hold our pipe open too.
                start_new_session=timeout is not None,
            )
        except OSError as e:
            raise ProvisionError(f"{what}: cannot run {cmd[0]}: {e}", log) from e
        assert proc.stdout is not None
        last_shown = time.monotonic()
        t0 = last_shown

        def kill() -> None:
            if timeout is None:
                proc.kill()
            else:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)

        expired = threading.Event()

        def expire() -> None:
            expired.set()
            kill()

        # The output loop blocks on the tool's next line, so a timer enforces the deadline.
        watchdog = threading.Timer(timeout, expire) if timeout is not None else None
        if watchdog is not None:
            watchdog.start()
        try:
            for line in proc.stdout:
                out.write(line)
                now = time.monotonic()
                if now - last_shown > 15 and logger.isEnabledFor(logging.INFO):
                    text = line.decode("utf-8", "replace").strip()[:90]
                    logger.info("  %s [%.0f s] %s", what, now - t0, text)
                    last_shown = now
            rc = proc.wait()
        except BaseException:
            kill()
            proc.wait()
            raise
        finally:
            if watchdog is not None:
                watchdog.cancel()
    if expired.is_set():
        raise ProvisionError(f"{what} did not finish in {timeout:.0f} s; killed", log, tail(log))
    if rc != 0:
        raise ProvisionError(f"{what} failed (exit {rc})", log, tail(log))


def stream_to(out: BinaryIO) -> Callable[[bytes], None]:
    """A sink for command output that shows each piece as it arrives."""

    def write(data: bytes) -> None:
        out.write(data)
        out.flush()

    return write
