"""A VM's watch: every wait of the rig ends within a second of the VM being lost, saying how.

One thread sleeps in poll() on pidfds — QEMU's, the device model's — and on a wake-up pipe, so
it costs nothing until something happens. The first of these becomes the VM's `failure`:

* QEMU exited: a guest panic if the console says so (GuestPanic), an oops or BUG if it shows
  one (GuestOops), else QemuExited with its status and stderr;
* the device model exited (its own verdict, a DeviceModelError);
* the console showed an oops or BUG: the verdict waits OOPS_GRACE s for the rest of its
  report, or for QEMU to exit (a panic that follows it wins);
* the guest hung: no console output and no answer to an SSH keepalive for `hang_after`
  seconds. Once SSH is up, a keepalive goes out after each `probe_every` s of console
  silence.

The failure then aborts every wait: the console's (SerialConsole.abort) and SSH's (the
connection is dropped; GuestSsh asks `explain` what that means, which is this failure). A
dropped connection that nothing here explains is SshLost: QEMU and the model still run.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import threading
import time
from collections.abc import Callable

from rig.errors import GuestHang, GuestOops, MachineError, RigError, SshLost
from rig.kernellog import OOPS, oops_line, report_from
from rig.vm.console import SerialConsole

logger = logging.getLogger(__name__)

Fate = Callable[[], RigError]  # what a process's exit means, asked once it has exited

PROBE_EVERY = 10.0  # s of console silence before an SSH keepalive (at most hang_after / 3)
OOPS_GRACE = 3.0  # s an oops's report may take to end (or to turn into a panic)
EXIT_GRACE = 1.0  # s a dropped connection gives QEMU to be seen exiting


class Watch:
    def __init__(self, console: SerialConsole, hang_after: float) -> None:
        self.console = console
        self.hang_after = hang_after
        self.probe_every = min(PROBE_EVERY, hang_after / 3)
        self.failure: RigError | None = None
        self._failed = threading.Event()
        self._lock = threading.Lock()
        self._procs: dict[int, tuple[str, Fate]] = {}  # pidfd -> (name, fate)
        self._aborts: list[Callable[[RigError], None]] = []
        self._wake_r, self._wake_w = os.pipe()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._oops_at: float | None = None
        self._probe: Callable[[], bool] | None = None
        self._probing = False
        self._answered = 0.0  # when the guest last answered a keepalive
        console.listen(self._on_console_line)

    # --- set-up -------------------------------------------------------------------------------

    def process(self, name: str, pid: int, fate: Fate) -> None:
        """Watch process `pid` (a child of ours, so its pid is not reused before we reap
        it); `fate` says what its exit means."""
        self._procs[os.pidfd_open(pid)] = (name, fate)
        self._wake()

    def on_failure(self, abort: Callable[[RigError], None]) -> None:
        """Call `abort` with the failure when there is one (at once if there is already)."""
        self._aborts.append(abort)
        if self.failure is not None:
            abort(self.failure)

    def probe_with(self, answers: Callable[[], bool]) -> None:
        """Start the hang check: `answers` blocks until the guest answers (True) or cannot."""
        self._answered = time.monotonic()
        self._probe = answers
        self._wake()

    def stop_probing(self) -> None:
        """End the hang check's SSH probes (the connection is being closed on purpose)."""
        self._probe = None
        self._wake()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="rig-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """End the thread (the teardown that follows is expected: nothing more is judged)."""
        self._stopping = True
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout=10)
        for fd in (*self._procs, self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._procs.clear()

    # --- what the rig waits for ---------------------------------------------------------------

    def wait(self, timeout: float | None = None) -> RigError | None:
        """Block until there is a failure (or `timeout`); the failure."""
        self._failed.wait(timeout)
        return self.failure

    def explain(self, lost: MachineError) -> RigError:
        """What a dropped SSH connection means: this watch's failure, the exit of a watched
        process seen within EXIT_GRACE s, an oops on the console, or SshLost."""
        if self.failure is not None:
            return self.failure
        poller = select.poll()
        for fd in self._procs:
            poller.register(fd, select.POLLIN)
        ready = poller.poll(EXIT_GRACE * 1000)
        if ready:
            return self._fail(self._procs[ready[0][0]][1])
        if line := oops_line(self.console.text):
            return self._fail(lambda: self._oops(line))
        return SshLost(
            f"lost the SSH connection to the guest while QEMU and the device model still run "
            f"({lost})",
            self.console.log_path,
        )

    # --- the thread ---------------------------------------------------------------------------

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def _on_console_line(self, line: str) -> None:
        if self._oops_at is None and OOPS.search(line):
            self._oops_at = time.monotonic()
            self._wake()

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self._wake_r, select.POLLIN)
        registered: set[int] = set()
        while not self._stopping and self.failure is None:
            for fd in set(self._procs) - registered:
                poller.register(fd, select.POLLIN)
                registered.add(fd)
            timeout = self._next_check()
            ready = poller.poll(None if timeout is None else max(timeout, 0) * 1000)
            if self._stopping:
                return
            for fd, _ in ready:
                if fd == self._wake_r:
                    os.read(self._wake_r, 4096)
                elif fd in self._procs:
                    name, fate = self._procs[fd]
                    logger.debug(f"watch: {name} exited")
                    self._fail(fate)
                    return
            self._check_oops()
            self._check_hang()

    def _next_check(self) -> float | None:
        """Seconds until the oops verdict or the next hang check is due (None: none is)."""
        now = time.monotonic()
        due = []
        if self._oops_at is not None:
            due.append(self._oops_at + OOPS_GRACE - now)
        if self._probe is not None:
            alive = max(self.console.last_output, self._answered)
            due.append(alive + self.hang_after - now)
            if not self._probing:
                due.append(alive + self.probe_every - now)
        return min(due) if due else None

    def _check_oops(self) -> None:
        if self._oops_at is None:
            return
        if time.monotonic() >= self._oops_at + OOPS_GRACE:
            line = oops_line(self.console.text) or "the console shows an oops"
            self._fail(lambda: self._oops(line))

    def _oops(self, line: str) -> RigError:
        report = report_from(self.console.text, OOPS)
        return GuestOops(f"guest kernel oops: {line}", self.console.log_path, report)

    def _check_hang(self) -> None:
        if self._probe is None or self.failure is not None:
            return
        now = time.monotonic()
        alive = max(self.console.last_output, self._answered)
        if now - alive >= self.hang_after:
            self._fail(
                lambda: GuestHang(
                    f"guest hung: no console output and no SSH answer for {now - alive:.0f} s",
                    self.console.log_path,
                    self.console.tail(5),
                )
            )
        elif now - alive >= self.probe_every and not self._probing:
            self._probing = True
            threading.Thread(target=self._keepalive, name="rig-keepalive", daemon=True).start()

    def _keepalive(self) -> None:
        probe = self._probe  # stop_probing() may clear it meanwhile
        try:
            if probe is not None and probe():
                self._answered = time.monotonic()
        finally:
            self._probing = False
            self._wake()

    def _fail(self, fate: Fate) -> RigError:
        """Make `fate` the failure, unless there is one already; abort every wait with it."""
        with self._lock:
            if self.failure is not None:
                return self.failure
            self.failure = fate()
        logger.debug(f"watch: {self.failure}")
        self._failed.set()
        for abort in self._aborts:
            try:
                abort(self.failure)
            except Exception as e:  # an abort that fails must not hide the failure
                logger.info(f"watch: aborting a wait failed: {e}")
        return self.failure
