"""A real SSH server in this process (paramiko's), with the rig's own keys, for GuestSsh to
connect to: each exec request goes to `on_exec`, which answers it on the channel."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import paramiko
from paramiko.common import AUTH_FAILED, AUTH_SUCCESSFUL, OPEN_SUCCEEDED

from rig.provision.sshkeys import rig_key
from rig.vm.ssh import GuestSsh, SshIdentity

OnExec = Callable[[paramiko.Channel, str], None]


class _Sshd(paramiko.ServerInterface):
    def __init__(self, client_key: paramiko.PKey, on_exec: OnExec) -> None:
        self.client_key = client_key
        self.on_exec = on_exec

    def check_channel_request(self, kind: str, chanid: int) -> int:
        return OPEN_SUCCEEDED

    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        return AUTH_SUCCESSFUL if key == self.client_key else AUTH_FAILED

    def check_channel_exec_request(self, channel: paramiko.Channel, command: bytes) -> bool:
        self.on_exec(channel, command.decode())
        return True


@dataclass
class Served:
    ssh: GuestSsh
    transport: paramiko.Transport  # the server's end: close() it to drop the connection


@contextmanager
def sshd(tmp_path: Path, on_exec: OnExec) -> Iterator[Served]:
    """A GuestSsh connected to a server whose exec requests go to `on_exec`."""
    (tmp_path / "host").mkdir()
    (tmp_path / "client").mkdir()
    host = paramiko.Ed25519Key.from_private_key_file(str(rig_key(tmp_path / "host").private))
    client_file = rig_key(tmp_path / "client").private
    client = paramiko.Ed25519Key.from_private_key_file(str(client_file))
    listener = socket.create_server(("127.0.0.1", 0))
    transports: list[paramiko.Transport] = []

    def serve() -> None:
        conn, _ = listener.accept()
        t = paramiko.Transport(conn)
        t.add_server_key(host)
        t.start_server(server=_Sshd(client, on_exec))
        transports.append(t)

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    port = listener.getsockname()[1]
    ssh = GuestSsh.connect(
        "127.0.0.1", port, SshIdentity(client_file, f"ssh-ed25519 {host.get_base64()}")
    )
    server.join(5)
    try:
        yield Served(ssh, transports[0])
    finally:
        ssh.close()
        transports[0].close()
        listener.close()
