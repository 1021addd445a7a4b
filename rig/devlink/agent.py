"""The host side of `netlink.py`: upload it into the guest, run it over SSH, parse its JSON."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

from ..errors import RigError
from ..ssh import Background, GuestSsh
from .cli import RegionInfo

SCRIPT = Path(__file__).with_name("netlink.py")
REMOTE = "/run/rig/devlink_netlink.py"


class NetlinkError(RigError):
    def __init__(self, op: str, message: str, errno: int | None) -> None:
        self.errno = errno
        super().__init__(f"netlink {op}: {message}")


class NetlinkAgent:
    """devlink regions through pyroute2 generic netlink, running inside the guest."""

    def __init__(self, ssh: GuestSsh, timeout: float = 120.0) -> None:
        self.ssh = ssh
        self.timeout = timeout
        self._uploaded = False

    def _ensure_uploaded(self) -> None:
        if not self._uploaded:
            self.ssh.run(f"mkdir -p {Path(REMOTE).parent}", timeout=30)
            self.ssh.put(SCRIPT, REMOTE)
            self._uploaded = True

    def call(self, *args: str) -> Any:
        self._ensure_uploaded()
        cmd = "python3 " + " ".join(shlex.quote(a) for a in (REMOTE, *args))
        res = self.ssh.run(cmd, timeout=self.timeout)
        try:
            doc = json.loads(res.stdout)
        except ValueError as e:
            raise RigError(
                f"netlink agent printed no JSON (exit {res.status}): "
                f"{(res.stderr or res.stdout).strip()[-400:]}"
            ) from e
        if isinstance(doc, dict) and "error" in doc:
            raise NetlinkError(args[0], doc["error"], doc.get("errno"))
        if res.status != 0:
            raise RigError(f"netlink agent {args[0]} failed (exit {res.status}): {res.stderr}")
        return doc

    def regions(self) -> list[RegionInfo]:
        return [
            RegionInfo(
                f"{r['bus']}/{r['dev']}/{r['name']}", r["size"], r["snapshots"], r["max_snapshots"]
            )
            for r in self.call("regions")
        ]

    def chunks(
        self, handle: str, snapshot: int | None, addr: int | None = None, length: int | None = None
    ) -> list[tuple[int, bytes]]:
        args = ["read", handle]
        if snapshot is not None:
            args += ["--snapshot", str(snapshot)]
        if addr is not None:
            args += ["--addr", str(addr)]
        if length is not None:
            args += ["--length", str(length)]
        return [(c["addr"], bytes.fromhex(c["data"])) for c in self.call(*args)]

    def read(
        self, handle: str, snapshot: int, addr: int | None = None, length: int | None = None
    ) -> bytes:
        chunks = self.chunks(handle, snapshot, addr, length)
        out = bytearray()
        start = chunks[0][0] if chunks else 0
        for a, data in chunks:
            if a != start + len(out):
                raise RigError(f"netlink read of {handle}: chunk at {a:#x} is not contiguous")
            out += data
        return bytes(out)

    def delete(self, handle: str, snapshot: int) -> None:
        self.call("del", handle, "--snapshot", str(snapshot))

    def new(self, handle: str, snapshot: int | None = None) -> None:
        args = ["new", handle] + (["--snapshot", str(snapshot)] if snapshot is not None else [])
        self.call(*args)

    def watch(self, count: int) -> RegionWatch:
        """Start listening for `count` REGION_NEW/DEL notifications; returns once listening."""
        self._ensure_uploaded()
        bg = self.ssh.start(f"python3 {REMOTE} watch --count {count}")
        line = bg.readline(timeout=60)
        if line is None or json.loads(line) != {"listening": True}:
            err = bg.stderr()
            bg.close()
            raise RigError(f"netlink watcher did not start: {line!r} {err}")
        return RegionWatch(bg)


class RegionWatch:
    """Region notifications as the guest's netlink socket receives them."""

    def __init__(self, bg: Background) -> None:
        self._bg = bg
        self.events: list[dict[str, Any]] = []

    def next(self, timeout: float) -> dict[str, Any]:
        line = self._bg.readline(timeout)
        if line is None:
            raise RigError(f"netlink watcher ended: {self._bg.stderr().strip()}")
        event: dict[str, Any] = json.loads(line)
        self.events.append(event)
        return event

    def close(self) -> None:
        self._bg.close()
