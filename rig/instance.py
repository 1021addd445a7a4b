"""A rig kept up for work by hand: `rig up` owns it; other terminals reach it by name.

`rig up` writes <cache>/instances/<name>.json (mode 0600: it names the rig's SSH key) with
what a second process needs — the SSH port, key and pinned host key, the device's control
socket — and what the rig owns: the `rig up` process, QEMU and the device model (each a pid
and its start time, rig.process.Identity, so a pid the kernel gave to another process is
never taken for theirs) and its temporary directories. It removes the file when it stops.

If the rig fails by itself (QEMU or the model died, the guest panicked or hung), `rig up`
writes why into the file and ends; the next command says so. If `rig up` was killed outright,
its QEMU and model died with it (rig.process.die_with_parent); the next command, `rig down`
or `rig up` removes what is left (`clean`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from cx3.client import ControlClient
from rig.cache import cache_root
from rig.errors import RigError, UsageError
from rig.process import Identity, tempdir_owner
from rig.rig import Rig
from rig.vm.ssh import Background, GuestSsh, Result, SshIdentity

NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")  # a file name in the instances dir
STOP_TIMEOUT = 60.0  # s `rig down` gives `rig up` to tear down before SIGKILL


@dataclass(frozen=True)
class Instance:
    name: str
    owner: tuple[int, int]  # the `rig up` process: pid, start time (Identity)
    ssh_port: int
    client_key: str
    host_key: str
    control_socket: str
    dev_handle: str
    log_dir: str
    processes: dict[str, tuple[int, int]] = field(default_factory=dict)  # QEMU, device model
    tempdirs: tuple[str, ...] = ()
    failure: str = ""  # why the rig ended by itself, if it did

    @staticmethod
    def path(name: str) -> Path:
        return cache_root() / "instances" / f"{check_name(name)}.json"

    @classmethod
    def publish(cls, name: str, rig: Rig) -> Instance:
        port, ident = rig.ssh_access()
        me = Identity.me()
        inst = cls(
            name,
            (me.pid, me.start),
            port,
            str(ident.client_key),
            ident.host_key,
            str(rig.device_model.control_socket),
            rig.dev_handle,
            str(rig.log_dir.resolve()),
            {
                what: (i.pid, i.start)
                for what, pid in rig.processes().items()
                if (i := Identity.of(pid)) is not None
            },
            tuple(map(str, rig.tempdirs())),
        )
        inst._write()
        return inst

    def _write(self) -> None:
        path = self.path(self.name)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(asdict(self), f, indent=2)
        tmp.rename(path)

    @classmethod
    def load(cls, name: str) -> Instance | None:
        """The instance file of rig `name` as it is (None if there is none)."""
        path = cls.path(name)
        try:
            doc = json.loads(path.read_text())
            doc["owner"] = tuple(doc["owner"])
            doc["processes"] = {k: tuple(v) for k, v in doc.get("processes", {}).items()}
            doc["tempdirs"] = tuple(doc.get("tempdirs", ()))
            return cls(**doc)
        except FileNotFoundError:
            return None
        except (ValueError, TypeError, KeyError) as e:
            raise RigError(f"{path} is damaged ({e}); remove it") from e

    @classmethod
    def find(cls, name: str) -> Instance:
        """The running rig `name`; RigError saying why there is none (its leftovers, if its
        `rig up` died, are removed on the way)."""
        inst = cls.load(name)
        if inst is None:
            raise RigError(f"no rig named {name!r} is up (start one with `rig up`)")
        if not inst.owner_identity.alive():
            # What it left goes; the file stays, saying why, until `rig down` or `rig up`.
            inst.clean(keep_file=True)
            if not inst.failure:
                inst = inst.record_failure(f"its `rig up` process {inst.owner[0]} died")
        if inst.failure:
            raise RigError(f"rig {name!r} failed: {inst.failure}; `rig down{_flag(name)}`")
        for what, (pid, start) in inst.processes.items():
            if not Identity(pid, start).alive():
                raise RigError(
                    f"rig {name!r} is broken: its {what} (pid {pid}) is gone; "
                    f"`rig down{_flag(name)}`"
                )
        return inst

    @property
    def owner_identity(self) -> Identity:
        return Identity(*self.owner)

    def record_failure(self, why: str) -> Instance:
        """Say in the file why the rig ended by itself (for the next commands)."""
        failed = replace(self, failure=why)
        failed._write()
        return failed

    def unpublish(self) -> None:
        self.path(self.name).unlink(missing_ok=True)

    def clean(self, keep_file: bool = False) -> list[str]:
        """Remove what a rig whose `rig up` is dead left: its processes (only if still the
        same processes), its temporary directories (only if its `rig up` made them), the
        file (unless `keep_file`). What was removed."""
        if self.owner_identity.alive():
            raise RigError(f"rig {self.name!r} is still up (pid {self.owner[0]})")
        removed = []
        for what, (pid, start) in self.processes.items():
            if Identity(pid, start).end():
                removed.append(f"{what} (pid {pid})")
        for d in map(Path, self.tempdirs):
            if d.exists() and tempdir_owner(d) == self.owner_identity:
                shutil.rmtree(d, ignore_errors=True)
                removed.append(str(d))
        if not keep_file:
            self.unpublish()
        return removed

    def ssh(self) -> GuestSsh:
        return GuestSsh.connect(
            "127.0.0.1", self.ssh_port, SshIdentity(Path(self.client_key), self.host_key)
        )

    def guest(self) -> RemoteGuest:
        """The guest over a new SSH connection, as `rig.traffic.Guest`; close() it."""
        return RemoteGuest(self.ssh(), self.dev_handle)

    def control(self) -> ControlClient:
        try:
            return ControlClient(self.control_socket)
        except OSError as e:
            raise RigError(
                f"rig {self.name!r}: its device model does not answer on {self.control_socket} "
                f"({e}); `rig down{_flag(self.name)}`"
            ) from e

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Ask the owning `rig up` to tear down (SIGTERM, to that very process), and wait
        until it has; SIGKILL after `timeout` (its QEMU and model die with it)."""
        owner = self.owner_identity
        if owner.signal(signal.SIGTERM) and not owner.wait_gone(timeout):
            owner.signal(signal.SIGKILL)
            owner.wait_gone(5.0)
            self.clean()
            raise RigError(
                f"rig {self.name!r} (pid {owner.pid}) did not stop in {timeout:g} s; killed"
            )


def check_name(name: str) -> str:
    """`name` if it can name a rig (it names its instance file); UsageError if not."""
    if not NAME.fullmatch(name):
        raise UsageError(f"bad rig name {name!r} (letters, digits, '.', '_', '-')")
    return name


def rig_name(text: str) -> str:
    """An argparse type: a rig's --name."""
    try:
        return check_name(text)
    except UsageError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _flag(name: str) -> str:
    return "" if name == "default" else f" --name {name}"


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
