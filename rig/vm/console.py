"""A VM's serial console, captured from the first byte to a log file and searchable live.

The rig listens on a unix socket before QEMU starts and QEMU's chardev connects to it as a
client, so no output is lost to a race; a reader thread drains it continuously so the guest
never stalls on a full socket. The log (and the text kept in memory) stops at a cap
(rig.vm.logcap). Each complete line goes to the listeners (rig.vm.watch looks for an oops),
and `abort()` ends every wait at once with the error the rig found (QEMU or the device model
died, the guest hung).
"""

from __future__ import annotations

import codecs
import contextlib
import re
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

from rig.errors import GuestPanic, MachineError, RigError
from rig.kernellog import PANIC, PANIC_END, panic_reason, report_from
from rig.vm.logcap import CONSOLE_LIMIT, CappedLog

# A wait that sees a panic ends at the end of its report, or this long after its first line.
PANIC_GRACE = 3.0
# What our guest scripts print when they give up (guest/init/*).
GUEST_FATAL = re.compile(r"rig-guest: FATAL: .*")


class SerialConsole:
    def __init__(self, socket_path: Path, log_path: Path, limit: int = CONSOLE_LIMIT) -> None:
        self.log_path = log_path
        self._log = CappedLog(log_path, limit, "console.log")  # one boot per log
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
        self._aborted: RigError | None = None
        self._listeners: list[Callable[[str], None]] = []
        self.last_output = time.monotonic()  # when the guest last printed anything

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

    def listen(self, on_line: Callable[[str], None]) -> None:
        """Call `on_line` (from the reader thread) with each complete line from now on."""
        self._listeners.append(on_line)

    def _read(self) -> None:
        assert self._conn is not None
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        try:
            while True:
                try:
                    data = self._conn.recv(65536)
                except OSError:
                    data = b""
                now = time.monotonic()
                if data:
                    self.last_output = now
                # Past the cap the guest's output is drained and dropped, in memory too.
                kept = self._log.write(data)
                text = decoder.decode(kept, final=not data).replace("\r", "")
                with self._cond:
                    self._text += text
                    self._partial += text
                    *done, self._partial = self._partial.split("\n")
                    self._lines += [(now, line) for line in done]
                    if not data:
                        self._eof = True
                    self._cond.notify_all()
                for line in done:
                    for on_line in self._listeners:
                        on_line(line)
                if not data:
                    return
        finally:
            self._log.close()

    @property
    def closed(self) -> bool:
        """Whether QEMU has closed the console (it exited)."""
        with self._cond:
            return self._eof

    def wait_closed(self, timeout: float) -> bool:
        """Wait until QEMU has closed the console, so all it printed is here; whether it has."""
        with self._cond:
            return self._cond.wait_for(lambda: self._eof, timeout)

    def abort(self, error: RigError) -> None:
        """End every wait, now and later, with `error`."""
        with self._cond:
            self._aborted = error
            self._cond.notify_all()

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
        the console closing (QEMU exited), the timeout, or the error of an abort().
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                if self._aborted is not None:
                    raise self._aborted
                if match := pattern.search(self._text, start):
                    return match
                now = time.monotonic()
                if panic := PANIC.search(self._text, start):
                    # Wait briefly for the whole panic report (QEMU exits right after it).
                    deadline = min(deadline, now + PANIC_GRACE)
                    if self._eof or PANIC_END.search(self._text, panic.end()) or now >= deadline:
                        raise GuestPanic(
                            f"guest kernel panic: {panic_reason(self._text[start:])}",
                            self.log_path,
                            report_from(self._text[start:], PANIC),
                        )
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
        else:
            self._log.close()  # no reader ever ran to close it
        if self._conn is not None:
            self._conn.close()
