"""A rig kept up for work by hand: `rig up` owns it; other terminals reach it by name.

`rig up` writes <cache>/instances/<name>.json with what a second process needs (the SSH
port, key and pinned host key, the device's control socket) and removes it when it stops.
"""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from cx3.client import ControlClient
from rig.cache import cache_root
from rig.errors import RigError
from rig.rig import Rig
from rig.vm.ssh import Background, GuestSsh, Result, SshIdentity


@dataclass(frozen=True)
class Instance:
    name: str
    pid: int  # the `rig up` process that owns the VM and the device model
    ssh_port: int
    client_key: str
    host_key: str
    control_socket: str
    dev_handle: str
    log_dir: str

    @staticmethod
    def path(name: str) -> Path:
        return cache_root() / "instances" / f"{name}.json"

    @classmethod
    def publish(cls, name: str, rig: Rig) -> Instance:
        port, ident = rig.ssh_access()
        inst = cls(
            name,
            os.getpid(),
            port,
            str(ident.client_key),
            ident.host_key,
            str(rig.device_model.control_socket),
            rig.dev_handle,
            str(rig.log_dir),
        )
        path = cls.path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(inst), indent=2))
        tmp.rename(path)
        return inst

    @classmethod
    def find(cls, name: str) -> Instance:
        path = cls.path(name)
        try:
            inst = cls(**json.loads(path.read_text()))
        except FileNotFoundError:
            raise RigError(f"no rig named {name!r} is up (start one with `rig up`)") from None
        except (ValueError, TypeError) as e:
            raise RigError(f"{path} is damaged ({e}); remove it") from e
        if not _alive(inst.pid):
            path.unlink(missing_ok=True)
            raise RigError(f"rig {name!r} is gone (its `rig up` process {inst.pid} died)")
        return inst

    def unpublish(self) -> None:
        self.path(self.name).unlink(missing_ok=True)

    def ssh(self) -> GuestSsh:
        return GuestSsh.connect(
            "127.0.0.1", self.ssh_port, SshIdentity(Path(self.client_key), self.host_key)
        )

    def guest(self) -> RemoteGuest:
        """The guest over a new SSH connection, as `rig.traffic.Guest`; close() it."""
        return RemoteGuest(self.ssh(), self.dev_handle)

    def control(self) -> ControlClient:
        return ControlClient(self.control_socket)

    def stop(self, timeout: float = 60.0) -> None:
        """Ask the owning `rig up` to tear down, and wait until it has."""
        os.kill(self.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _alive(self.pid):
            if time.monotonic() > deadline:
                raise RigError(f"rig {self.name!r} (pid {self.pid}) did not stop in {timeout} s")
            time.sleep(0.1)  # another process's exit gives us no event to wait on


class RemoteGuest:
    """A `rig up` guest reached from another process: sh, spawn and put, as a Rig has them."""

    def __init__(self, ssh: GuestSsh, dev_handle: str) -> None:
        self.ssh = ssh
        self.dev_handle = dev_handle

    def sh(self, command: str, timeout: float = 120.0, check: bool = True) -> Result:
        res = self.ssh.run(command, timeout)
        return res.checked(command) if check else res

    def spawn(self, command: str) -> Background:
        return self.ssh.start(command)

    def put(self, local: Path, remote: str) -> None:
        self.ssh.put(local, remote)

    def close(self) -> None:
        self.ssh.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
