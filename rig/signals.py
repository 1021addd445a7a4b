"""SIGTERM and SIGHUP end the rig the way Ctrl-C does: the run's report is written, the VM and
the device model are torn down, and the command exits 128 + the signal's number (130 SIGINT,
143 SIGTERM, 129 SIGHUP), as a shell reports a process the signal killed.

`install()` (rig.cli.main calls it) makes each of them raise `Interrupted` in the main thread.
A teardown runs under `deferred()`: a signal that arrives meanwhile is held until it ends, so
the teardown is never cut short half-way (it is bounded: QEMU gets SIGKILL after its grace).
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

HANDLED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupted(KeyboardInterrupt):
    """The rig was told to stop by a signal. A KeyboardInterrupt, so whatever cleans up after
    Ctrl-C cleans up after SIGTERM and SIGHUP too."""

    def __init__(self, signum: int, note: str = "") -> None:
        self.signum = signum
        self.note = note
        super().__init__(signum, note)

    @property
    def signame(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_status(self) -> int:
        return 128 + self.signum

    def __str__(self) -> str:
        verb = "interrupted" if self.signum == signal.SIGINT else "terminated"
        return f"{verb} by {self.signame}" + (f" ({self.note})" if self.note else "")


_held: list[int] = []  # signals that came during a deferred() block
_depth = 0


def _raise(signum: int, frame: FrameType | None) -> None:
    if _depth:
        _held.append(signum)
        return
    raise Interrupted(signum)


def install() -> None:
    """Make SIGINT, SIGTERM and SIGHUP raise Interrupted (call from the main thread)."""
    for signum in HANDLED:
        signal.signal(signum, _raise)


@contextmanager
def deferred() -> Iterator[None]:
    """Hold the handled signals for the duration of the block (a teardown); the first one
    held is raised at its end, unless the block is already ending with an exception."""
    global _depth
    _depth += 1
    try:
        yield
    except BaseException:
        _depth -= 1
        if not _depth:
            _held.clear()  # the block's own exception is the story
        raise
    _depth -= 1
    if not _depth and _held:
        signum = _held[0]
        _held.clear()
        raise Interrupted(signum)
