"""The model's log: one line per event, a run of identical lines collapsed, the file bounded.

A guest that repeats one bad access thousands of times must not write thousands of lines
(`RepeatFilter`), and nothing the guest does may grow the file without bound (`CappedLog`, one
rotation). Tracebacks bypass logging, written straight to stderr: the file follows each rotation
there, so a crash always lands in the current file, where the rig looks.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
from pathlib import Path
from typing import TextIO

MAX_BYTES = 8 << 20  # per file; with the one rotated file the log stays under 16 MiB
REPORT_EVERY = 10.0  # seconds: a run still repeating is reported this often
FORMAT = "%(asctime)s %(message)s"
DATE_FORMAT = "%H:%M:%S"


class RepeatFilter(logging.Filter):
    """Pass the first of a run of identical lines; the rest become one
    "last line repeated N times", written when another line comes (or every REPORT_EVERY
    seconds while the run lasts)."""

    def __init__(self, handler: logging.Handler, every: float = REPORT_EVERY) -> None:
        super().__init__()
        self._handler = handler
        self._every = every
        self._last: str | None = None
        self._repeats = 0
        self._reported_at = 0.0

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "repeat_report", False):
            return True
        message = record.getMessage()
        if message == self._last:
            self._repeats += 1
            if record.created - self._reported_at >= self._every:
                self._report(record)
            return False
        self._report(record)
        self._last = message
        return True

    def _report(self, at: logging.LogRecord) -> None:
        self._reported_at = at.created
        if not self._repeats:
            return
        n, self._repeats = self._repeats, 0
        report = logging.makeLogRecord(
            {
                "name": at.name,
                "levelno": at.levelno,
                "levelname": at.levelname,
                "msg": f"last line repeated {n} times",
                "created": at.created,
                "msecs": at.msecs,
                "repeat_report": True,
            }
        )
        self._handler.handle(report)


class CappedLog(logging.handlers.RotatingFileHandler):
    """A log file rotated once at `max_bytes` (the older part in `<file>.1`). The streams
    given to `follow` are pointed at the current file, at once and after each rotation."""

    def __init__(self, path: Path, max_bytes: int) -> None:
        super().__init__(path, maxBytes=max_bytes, backupCount=1)
        self._followers: list[TextIO] = []

    def follow(self, stream: TextIO) -> None:
        self._followers.append(stream)
        self._point(stream)

    def _point(self, stream: TextIO) -> None:
        assert self.stream is not None  # opened at once (no `delay`)
        stream.flush()
        os.dup2(self.stream.fileno(), stream.fileno())

    def doRollover(self) -> None:
        super().doRollover()
        for stream in self._followers:
            self._point(stream)
        assert self.stream is not None
        older = Path(self.baseFilename).name + ".1"
        self.stream.write(f"log rotated at {self.maxBytes} bytes: earlier lines in {older}\n")


def setup(handler: logging.Handler) -> None:
    """Send every logger's records at INFO and above to `handler`, through a RepeatFilter."""
    handler.setFormatter(logging.Formatter(FORMAT, DATE_FORMAT))
    handler.addFilter(RepeatFilter(handler))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
