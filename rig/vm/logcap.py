"""QEMU's logs, bounded: a log keeps its first `limit` bytes and then only counts the rest.

A device model that dies under QEMU makes vfio-user-pci report every guest access on stderr:
250 MB in 12 s, until the disk is full. The head of such a log holds the cause; the rest is
the same lines again. So past the cap a log says so, once, drops what follows, and at close
says how much it dropped. Its reader keeps draining, so QEMU never blocks on a full pipe.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import BinaryIO

logger = logging.getLogger(__name__)

CONSOLE_LIMIT = 32 << 20
STDERR_LIMIT = 8 << 20


class CappedLog:
    """A log file written up to `limit` bytes; then a note, and only a count of the rest."""

    def __init__(self, path: Path, limit: int, what: str) -> None:
        self.path = path
        self.limit = limit
        self.what = what
        self.written = 0
        self.dropped = 0
        self._lock = threading.Lock()  # a reader thread writes, the owner closes
        self._file: BinaryIO = path.open("wb")

    @property
    def capped(self) -> bool:
        return self.dropped > 0

    def write(self, data: bytes) -> bytes:
        """Write what fits under the cap; the part kept."""
        with self._lock:
            if self._file.closed:
                return b""
            return self._write(data)

    def _write(self, data: bytes) -> bytes:
        keep = data[: max(self.limit - self.written, 0)]
        if keep:
            self._file.write(keep)
            self._file.flush()
            self.written += len(keep)
        if len(keep) < len(data):
            if not self.capped:
                self._file.write(self._note("later output is dropped").encode())
                self._file.flush()
                logger.warning(
                    f"{self.what} reached {self.limit >> 20} MiB: the rest is dropped ({self.path})"
                )
            self.dropped += len(data) - len(keep)
        return keep

    def _note(self, what: str) -> str:
        return f"\n[rig: {self.what} capped at {self.limit} bytes; {what}]\n"

    def close(self) -> None:
        with self._lock:
            if self._file.closed:
                return
            if self.capped:
                self._file.write(self._note(f"{self.dropped} bytes dropped").encode())
            self._file.close()


class PipeLog:
    """A pipe a child writes its output into, drained by a thread into a CappedLog."""

    def __init__(self, path: Path, limit: int, what: str) -> None:
        self.log = CappedLog(path, limit, what)
        self._read, self.write_fd = os.pipe()
        self._thread = threading.Thread(target=self._drain, name=f"rig-{what}", daemon=True)

    def started(self) -> None:
        """The child has its copy of the write end: drop ours and start draining."""
        os.close(self.write_fd)
        self._thread.start()

    def _drain(self) -> None:
        try:
            while data := os.read(self._read, 65536):
                self.log.write(data)
        finally:
            os.close(self._read)

    def close(self, timeout: float = 5.0) -> None:
        """Wait for the end of the output (the child has exited), then close the file."""
        if self._thread.ident is None:  # never started: nobody else holds the write end
            os.close(self.write_fd)
            os.close(self._read)
        else:
            self._thread.join(timeout)
        self.log.close()

    def flushed(self, timeout: float = 2.0) -> None:
        """Wait until everything the (exited) child wrote is in the file."""
        if self._thread.ident is not None:
            self._thread.join(timeout)
