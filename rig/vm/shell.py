"""One long-lived shell per SSH connection for the guest's commands (GuestSsh.run).

An SSH exec channel per command costs the guest ~30-40 ms of QEMU CPU under TCG (sshd's
session, its fork, the login shell's start) and ~65 ms of wall; through one shell on one
channel an SSH `true` costs ~6 ms and 6 ms (docs/clock.md, session 18). The shell is the
login shell, as an exec channel's `$SHELL -c` is. Each command runs in a subshell through
`eval` of its quoted text, with stdin from /dev/null: its syntax errors, `cd`, `exit` and
variables stay its own, and nothing it prints can end the framing. Its end is a marker line
with its exit status on stdout and a marker line on stderr, made of a token drawn for this
shell that a command's output does not hold by chance.

What differs from an exec channel: stdin is /dev/null (an exec channel's never ends), and a
command killed by a signal reports 128+N as a shell does, not a missing exit status.
"""

from __future__ import annotations

import secrets
import select
import shlex
import threading
import time

import paramiko

from rig import settings
from rig.errors import MachineError

ENV = "RIG_GUEST_SHELL"
MODES = ("on", "off")  # off: an exec channel per command, as before session 18
SHELL = 'exec "$SHELL"'
# paramiko wakes a select() on a channel through one pipe that the stdout and stderr buffers
# share without a lock (paramiko.pipe.OrPipe): emptying one buffer while the transport thread
# feeds the other can leave the pipe clear with data waiting (the likely cause of a 300 s
# hang, once, at the end of an mstregdump). An exec channel's EOF sets the pipe for good;
# this channel has no EOF, so no wait trusts the pipe for longer than this.
WAKE = 0.1


def enabled() -> bool:
    """$RIG_GUEST_SHELL (on, the default, or off); UsageError naming a bad value."""
    return settings.choice(None, "guest shell", ENV, "on", MODES) == "on"


class ShellBroken(MachineError):
    """The shell cannot answer (a timeout, a dead shell): the next command needs another."""


class ShellLost(ShellBroken):
    """The shell's channel closed without its EOF: the connection dropped."""


class _Stream:
    """One of the channel's streams: what a command printed, up to its end marker."""

    def __init__(self, marker: bytes, status: bool) -> None:
        self.data = bytearray()
        self._marker = marker
        self._status = status  # a status line follows the marker (stdout)
        self._at = -1

    def feed(self, data: bytes) -> None:
        seen = len(self.data)
        self.data += data
        if self._at < 0:  # search only what can hold a marker not seen before
            self._at = self.data.find(self._marker, max(0, seen - len(self._marker) + 1))

    @property
    def ended(self) -> bool:
        if self._at < 0:
            return False
        return not self._status or self.data.find(b"\n", self._at + len(self._marker)) >= 0

    def output(self) -> bytes:
        return bytes(self.data[: self._at])

    def status(self) -> int:
        return int(self.data[self._at + len(self._marker) :].split()[0])


class GuestShell:
    """The shell on one connection; `lock` it for a command (one at a time)."""

    def __init__(self, transport: paramiko.Transport, where: str) -> None:
        self.where = where
        self.lock = threading.Lock()
        self._token = secrets.token_hex(8)
        self._n = 0
        try:
            self._chan = transport.open_session(timeout=30)
            self._chan.exec_command(SHELL)
        except (paramiko.SSHException, OSError, EOFError) as e:
            raise ShellBroken(f"ssh {where}: cannot start the command shell: {e}") from e

    def run(self, command: str, timeout: float) -> tuple[int, bytes, bytes]:
        """`command`'s exit status, stdout and stderr; ShellBroken if the shell cannot say."""
        self._n += 1
        mark = f"__rig_{self._token}_{self._n}"
        script = (
            f"(eval {shlex.quote(command)}) </dev/null; printf '\\n%s %d\\n' {mark} $?; "
            f"printf '\\n%s\\n' {mark} >&2\n"
        )
        out = _Stream(f"\n{mark} ".encode(), status=True)
        err = _Stream(f"\n{mark}\n".encode(), status=False)
        chan = self._chan
        deadline = time.monotonic() + timeout
        try:
            chan.sendall(script.encode())
            while True:
                while chan.recv_ready():
                    out.feed(chan.recv(65536))
                while chan.recv_stderr_ready():
                    err.feed(chan.recv_stderr(65536))
                if out.ended and err.ended:
                    return out.status(), out.output(), err.output()
                if chan.closed and not chan.eof_received:
                    raise ShellLost(f"ssh {self.where}: {command!r}: the connection was lost")
                if chan.eof_received:
                    raise ShellBroken(f"ssh {self.where}: {command!r}: the command shell ended")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ShellBroken(
                        f"ssh {self.where}: {command!r} still running after {timeout:.0f} s"
                    )
                select.select([chan], [], [], min(remaining, WAKE))
        except (OSError, paramiko.SSHException) as e:
            raise ShellBroken(f"ssh {self.where}: {command!r}: command shell: {e}") from e

    def close(self) -> None:
        self._chan.close()
