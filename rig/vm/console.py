"""A VM's serial console, captured from the first byte to a log file and searchable live.

The rig listens on a unix socket before QEMU starts and QEMU's chardev connects to it as a
client, so no output is lost to a race; a reader thread drains it continuously so the guest
never stalls on a full socket.
"""

from __future__ import annotations

import codecs
import contextlib
import re
import socket
import threading
import time
from pathlib import Path

from rig.errors import MachineError

# The kernel's own words for a dead guest: a wait ends at the end of its report.
PANIC_START = re.compile(r"Kernel panic - not syncing")
PANIC_END = re.compile(r"end Kernel panic")
PANIC_GRACE = 3.0
# What our guest scripts print when they give up (guest/init/*).
GUEST_FATAL = re.compile(r"rig-guest: FATAL: .*")


class SerialConsole:
    def __init__(self, socket_path: Path, log_path: Path) -> None:
        self.log_path = log_path
        log_path.write_bytes(b"")  # one boot per log: the reader appends from here on
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(socket_path))
        self._listener.listen(1)
        self._conn: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._cond = threading.Condition()
        self._text = ""
        self._lines: list[tuple[float, str]] = []  # (monotonic time, line) as each completes
        self._partial = ""
        self._eof = False

    @property
    def listener(self) -> socket.socket:
        """The listening socket (for select() while QEMU starts)."""
        return self._listener

    def accept(self) -> None:
        """Take QEMU's connection (call once the listener is readable) and start capturing."""
        self._conn, _ = self._listener.accept()
        self._listener.close()
        self._thread = threading.Thread(target=self._read, name="rig-console", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self._conn is not None
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        with self.log_path.open("ab") as log:
            while True:
                try:
                    data = self._conn.recv(65536)
                except OSError:
                    data = b""
                if data:
                    log.write(data)
                    log.flush()
                text = decoder.decode(data, final=not data).replace("\r", "")
                now = time.monotonic()
                with self._cond:
                    self._text += text
                    self._partial += text
                    *done, self._partial = self._partial.split("\n")
                    self._lines += [(now, line) for line in done]
                    if not data:
                        self._eof = True
                    self._cond.notify_all()
                if not data:
                    return

    @property
    def text(self) -> str:
        with self._cond:
            return self._text

    def lines(self) -> list[tuple[float, str]]:
        """Every complete line so far with the host's monotonic time it arrived."""
        with self._cond:
            return list(self._lines)

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.text.splitlines()[-lines:])

    def wait_for(self, pattern: re.Pattern[str], timeout: float, start: int = 0) -> re.Match[str]:
        """Wait until `pattern` appears in the console text from offset `start`.

        Raises MachineError (with the console's tail) on a kernel panic, a guest FATAL line,
        the console closing (QEMU exited), or the timeout.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                if match := pattern.search(self._text, start):
                    return match
                now = time.monotonic()
                if panic := PANIC_START.search(self._text, start):
                    # Wait briefly for the whole panic report (QEMU exits right after it).
                    deadline = min(deadline, now + PANIC_GRACE)
                    if self._eof or PANIC_END.search(self._text, panic.end()) or now >= deadline:
                        raise MachineError("guest kernel panicked", self.log_path, self.tail())
                if fatal := GUEST_FATAL.search(self._text, start):
                    raise MachineError(
                        f"guest failed: {fatal.group(0).strip()}", self.log_path, self.tail()
                    )
                if self._eof:
                    raise MachineError(
                        f"QEMU closed the console before {pattern.pattern!r}",
                        self.log_path,
                        self.tail(),
                    )
                if now >= deadline:
                    raise MachineError(
                        f"no {pattern.pattern!r} on the console within {timeout:.0f} s",
                        self.log_path,
                        self.tail(),
                    )
                self._cond.wait(deadline - now)

    def close(self) -> None:
        self._listener.close()
        if self._conn is not None:
            with contextlib.suppress(OSError):  # QEMU may have closed it already
                self._conn.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._conn is not None:
            self._conn.close()
