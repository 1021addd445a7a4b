"""SSH into a rig guest: the cache's client key, the image's pinned host key, nothing else.

No agent, no ~/.ssh keys, no known_hosts: a guest presenting any other host key is refused.

A connection that drops (QEMU died, the rig's watch aborted it) ends every wait on it at once
with `on_lost`'s verdict (rig.vm.watch: which of QEMU, the device model or the guest failed);
a channel closed without its EOF is such a drop, a command killed by a signal is not.
"""

from __future__ import annotations

import base64
import select
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import paramiko

from rig.errors import MachineError, RigError
from rig.vm import shell as guestshell
from rig.vm.shell import GuestShell, ShellBroken, ShellLost

Sink = Callable[[bytes], None]
# What a dropped connection means, given the bare fact (rig.vm.watch.Watch.explain).
LostHook = Callable[[MachineError], RigError]
STDERR_KEPT = 64 << 10  # of a background command's stderr


class SshRefused(MachineError):
    """The guest answered but refused us (or we it): retrying cannot help."""


@dataclass(frozen=True)
class SshIdentity:
    client_key: Path  # private key file (ed25519, OpenSSH format)
    host_key: str  # the guest's "ssh-ed25519 AAAA... comment" line
    user: str = "root"


@dataclass(frozen=True)
class Result:
    status: int
    stdout: str
    stderr: str

    def checked(self, command: str) -> Result:
        """This result, or RigError naming `command` and its complaint if it failed."""
        if self.status != 0:
            raise RigError(
                f"guest command `{command}` failed (exit {self.status}): "
                f"{(self.stderr or self.stdout).strip()[-500:]}"
            )
        return self


def _host_key(line: str) -> paramiko.PKey:
    try:
        key_type, b64 = line.split()[:2]
        return paramiko.PKey.from_type_string(key_type, base64.b64decode(b64))
    except (ValueError, paramiko.SSHException) as e:
        raise MachineError(f"cannot parse the pinned guest host key {line!r}: {e}") from e


class GuestSsh:
    """One SSH connection to a guest."""

    def __init__(self, client: paramiko.SSHClient, where: str) -> None:
        self._client = client
        self.where = where
        self.on_lost: LostHook | None = None
        self._shell: GuestShell | None = None
        self._shell_made = threading.Lock()
        self._use_shell = guestshell.enabled()

    def lost(self, what: str) -> RigError:
        """The error for a connection that dropped during `what`."""
        error = MachineError(f"ssh {self.where}: {what}: the connection was lost")
        return self.on_lost(error) if self.on_lost is not None else error

    @property
    def connected(self) -> bool:
        """Whether the connection is up (False once it dropped)."""
        return self._active()

    def _active(self) -> bool:
        transport = self._client.get_transport()
        return transport is not None and transport.is_active()

    @classmethod
    def connect(
        cls, host: str, port: int, identity: SshIdentity, timeout: float = 30.0
    ) -> GuestSsh:
        """Connect and authenticate; MachineError (one line) on any failure."""
        where = f"{identity.user}@{host}:{port}"
        client = paramiko.SSHClient()
        # paramiko looks keys up as "[host]:port" for ports other than 22.
        name = host if port == 22 else f"[{host}]:{port}"
        key = _host_key(identity.host_key)
        client.get_host_keys().add(name, key.get_name(), key)
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        try:
            pkey = paramiko.Ed25519Key.from_private_key_file(str(identity.client_key))
            client.connect(
                host,
                port,
                identity.user,
                pkey=pkey,
                timeout=timeout,
                banner_timeout=timeout,
                auth_timeout=timeout,
                look_for_keys=False,
                allow_agent=False,
            )
        except paramiko.BadHostKeyException as e:
            client.close()
            raise SshRefused(
                f"ssh {where}: the guest's host key is not the pinned one "
                f"({e.key.get_name()}); rebuild the root filesystem"
            ) from e
        except paramiko.AuthenticationException as e:
            client.close()
            raise SshRefused(f"ssh {where}: the guest refused {identity.client_key}") from e
        except (paramiko.SSHException, OSError, EOFError) as e:
            client.close()
            raise MachineError(f"ssh {where}: {type(e).__name__}: {e}") from e
        return cls(client, where)

    def run(
        self,
        command: str,
        timeout: float = 60.0,
        on_stdout: Sink | None = None,
        on_stderr: Sink | None = None,
    ) -> Result:
        """Run `command` with the guest's shell; its exit status and output.

        on_stdout/on_stderr get output as it arrives (for streaming); Result has it all.
        Raises MachineError if the connection fails or `timeout` passes.
        """
        # The connection's shell (rig.vm.shell) for a command whose output is wanted at its
        # end; streaming (on_stdout/on_stderr: `rig run`, the gzipped dumps) keeps an exec
        # channel of its own, as does a command while another thread's holds the shell.
        if self._use_shell and on_stdout is None and on_stderr is None:
            shell = self._shell_for_now()
            if shell is not None:
                try:
                    status, stdout, stderr = shell.run(command, timeout)
                except ShellBroken as e:
                    self._drop_shell(shell)
                    if isinstance(e, ShellLost) or not self._active():
                        raise self.lost(repr(command)) from e
                    raise
                finally:
                    shell.lock.release()
                decoded = stdout.decode("utf-8", "replace"), stderr.decode("utf-8", "replace")
                return Result(status, *decoded)
        chan = self._exec(command, timeout)
        out: list[bytes] = []
        err: list[bytes] = []
        deadline = time.monotonic() + timeout
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise MachineError(
                        f"ssh {self.where}: {command!r} still running after {timeout:.0f} s"
                    )
                if chan.eof_received:
                    chan.status_event.wait(remaining)  # all output is in, only the status is due
                else:
                    # The channel's fileno turns readable on stdout or stderr data and on EOF.
                    select.select([chan], [], [], remaining)
                while chan.recv_ready():
                    data = chan.recv(65536)
                    out.append(data)
                    if on_stdout:
                        on_stdout(data)
                while chan.recv_stderr_ready():
                    data = chan.recv_stderr(65536)
                    err.append(data)
                    if on_stderr:
                        on_stderr(data)
                if (
                    chan.exit_status_ready()
                    and (chan.eof_received or chan.closed)
                    and not (chan.recv_ready() or chan.recv_stderr_ready())
                ):
                    break
            status = chan.recv_exit_status()
        except (OSError, paramiko.SSHException) as e:
            if not self._active():
                raise self.lost(repr(command)) from e
            raise MachineError(f"ssh {self.where}: {command!r}: {e}") from e
        finally:
            chan.close()
        if status == -1:
            if not chan.eof_received:
                raise self.lost(repr(command))
            raise MachineError(
                f"ssh {self.where}: {command!r} ended without an exit status (killed by a signal)"
            )
        return Result(
            status,
            b"".join(out).decode("utf-8", "replace"),
            b"".join(err).decode("utf-8", "replace"),
        )

    def _shell_for_now(self) -> GuestShell | None:
        """The connection's shell, locked for one command; None when another thread holds it
        or it cannot start (the command then takes an exec channel, which names the error)."""
        with self._shell_made:
            if self._shell is None:
                transport = self._client.get_transport()
                if transport is None or not transport.is_active():
                    return None
                try:
                    self._shell = GuestShell(transport, self.where)
                except ShellBroken:
                    return None
            # Taken here, not after: a shell dropped by the command that held it (it is
            # dropped before its lock goes) is never handed out.
            shell = self._shell
            return shell if shell.lock.acquire(blocking=False) else None

    def _drop_shell(self, shell: GuestShell) -> None:
        shell.close()
        with self._shell_made:
            if self._shell is shell:
                self._shell = None

    def _exec(self, command: str, timeout: float) -> paramiko.Channel:
        transport = self._client.get_transport()
        if transport is None or not transport.is_active():
            raise self.lost(f"running {command!r}")
        try:
            chan = transport.open_session(timeout=timeout)
            chan.exec_command(command)
        except (paramiko.SSHException, OSError, EOFError) as e:
            if not self._active():
                raise self.lost(f"running {command!r}") from e
            raise MachineError(f"ssh {self.where}: cannot run {command!r}: {e}") from e
        return chan

    def start(self, command: str, timeout: float = 30.0) -> Background:
        """Start `command` and return at once; read its stdout line by line."""
        chan = self._exec(command, timeout)
        return Background(chan, command, self)

    def forward(self, port: int, timeout: float = 30.0) -> Background:
        """A TCP connection to the guest's 127.0.0.1:`port` through this connection (sshd's
        direct-tcpip), read and written as a started command's output and input; MachineError
        if nothing listens there."""
        transport = self._client.get_transport()
        what = f"127.0.0.1:{port} in the guest"
        if transport is None or not transport.is_active():
            raise self.lost(f"connecting to {what}")
        try:
            chan = transport.open_channel(
                "direct-tcpip", ("127.0.0.1", port), ("127.0.0.1", 0), timeout=timeout
            )
        except (paramiko.SSHException, OSError, EOFError) as e:
            if not self._active():
                raise self.lost(f"connecting to {what}") from e
            raise MachineError(f"ssh {self.where}: cannot connect to {what}: {e}") from e
        return Background(chan, what, self)

    def put(self, local: Path, remote: str) -> None:
        """Copy a file to the guest over SFTP (mode preserved)."""
        try:
            with self._client.open_sftp() as sftp:
                sftp.put(str(local), remote)
                sftp.chmod(remote, local.stat().st_mode & 0o7777)
        except (OSError, paramiko.SSHException) as e:
            if not self._active():
                raise self.lost(f"copying {local} to {remote}") from e
            raise MachineError(f"sftp {local} -> {self.where}:{remote}: {e}") from e

    def answers(self) -> bool:
        """Whether the guest's sshd answers a keepalive request (blocks until it does, or
        the connection drops): proof that the guest still schedules its processes."""
        transport = self._client.get_transport()
        if transport is None or not transport.is_active():
            return False
        try:
            # sshd refuses the request, and that refusal is the answer (OpenSSH's own probe).
            transport.global_request("keepalive@openssh.com", wait=True)
        except (paramiko.SSHException, OSError, EOFError):
            return False
        return transport.is_active()

    def abort(self) -> None:
        """Drop the connection (from any thread): every wait on it ends with `on_lost`'s
        verdict."""
        transport = self._client.get_transport()
        if transport is not None:
            transport.close()

    def close(self) -> None:
        self._client.close()


class Background:
    """A command left running in the guest (e.g. a netlink watcher)."""

    def __init__(self, chan: paramiko.Channel, command: str, ssh: GuestSsh) -> None:
        self._chan = chan
        self._buf = b""
        self._err = b""
        self.command = command
        self._ssh = ssh
        self.where = ssh.where

    def readline(self, timeout: float) -> str | None:
        """The next stdout line, or None at end of output; MachineError after `timeout`,
        `on_lost`'s verdict as soon as the connection drops."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise MachineError(
                    f"ssh {self.where}: no output from {self.command!r} within {timeout:.0f} s"
                )
            select.select([self._chan], [], [], remaining)
            self._take_stderr()  # stderr makes the channel readable too: take it
            if self._chan.recv_ready():
                self._buf += self._chan.recv(65536)
            elif self._chan.eof_received:
                if not self._buf:
                    return None
                self._buf += b"\n"
            elif self._chan.closed:
                # A closed channel stays readable and never gets its EOF: waiting on it spun
                # at 100% CPU until the timeout.
                raise self._ssh.lost(repr(self.command))
        line, self._buf = self._buf.split(b"\n", 1)
        return line.decode("utf-8", "replace")

    def write(self, data: bytes) -> None:
        """Send to the command's stdin."""
        try:
            self._chan.sendall(data)
        except (OSError, paramiko.SSHException) as e:
            if self._chan.closed and not self._chan.eof_received:
                raise self._ssh.lost(f"{self.command!r} stdin") from e
            raise MachineError(f"ssh {self.where}: {self.command!r} stdin: {e}") from e

    def wait(self, timeout: float) -> int:
        """Wait for the command to end (its remaining stdout is discarded); its status."""
        deadline = time.monotonic() + timeout
        while not self._chan.exit_status_ready():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise MachineError(
                    f"ssh {self.where}: {self.command!r} still running after {timeout:.0f} s"
                )
            select.select([self._chan], [], [], remaining)
            self._take_stderr()
            while self._chan.recv_ready():
                self._chan.recv(65536)
        status = self._chan.recv_exit_status()
        if status == -1 and not self._chan.eof_received:
            raise self._ssh.lost(repr(self.command))
        return status

    def _take_stderr(self) -> None:
        while self._chan.recv_stderr_ready():
            self._err = (self._err + self._chan.recv_stderr(65536))[-STDERR_KEPT:]

    def stderr(self) -> str:
        """What the command wrote on stderr so far (its last STDERR_KEPT bytes)."""
        self._take_stderr()
        return self._err.decode("utf-8", "replace")

    def close(self) -> None:
        self._chan.close()
