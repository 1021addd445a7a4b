"""The host side of `netlink.py`: upload it into the guest, run it there, parse its JSON.

One agent process serves a whole session (requests on its stdin, one JSON reply line each):
starting Python and importing pyroute2 takes seconds under TCG.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from rig.devlink.cli import RegionInfo
from rig.errors import RigError
from rig.provision.guestfiles import guest_program
from rig.vm.ssh import Background, GuestSsh

SCRIPT = guest_program("devlink_netlink.py")
REMOTE = "/run/rig/devlink_netlink.py"
T = TypeVar("T")


class NetlinkError(RigError):
    def __init__(self, op: str, message: str, errno: int | None) -> None:
        self.errno = errno
        super().__init__(f"netlink {op}: {message}")


class NetlinkAgent:
    """devlink regions through pyroute2 generic netlink, running inside the guest."""

    def __init__(self, ssh: GuestSsh, timeout: float = 120.0, as_user: str = "") -> None:
        """as_user: a command prefix that drops privileges (e.g. `setpriv --reuid=65534 ...`)
        to run the agent as another user."""
        self.ssh = ssh
        self.timeout = timeout
        self.as_user = as_user
        self._uploaded = False
        self._server: Background | None = None
        self._launching: Background | None = None  # started, not yet ready

    def _ensure_uploaded(self) -> None:
        if not self._uploaded:
            self.ssh.run(f"mkdir -p {Path(REMOTE).parent}", timeout=30)
            self.ssh.put(SCRIPT, REMOTE)
            self._uploaded = True

    def prestart(self) -> None:
        """Launch the agent without waiting for it, so its slow start-up (Python and pyroute2
        under TCG take seconds) overlaps other work; the first request waits for it."""
        if self._server is None and self._launching is None:
            self._ensure_uploaded()
            self._launching = self.ssh.start(f"{self.as_user} python3 {REMOTE} serve".strip())

    def start(self) -> None:
        """Launch the agent, if it is not running, and wait until it serves."""
        self._start()

    def _start(self) -> Background:
        if self._server is None:
            self.prestart()
            server, self._launching = self._launching, None
            assert server is not None
            line = server.readline(timeout=self.timeout)
            if line is None or json.loads(line) != {"ready": True}:
                err = server.stderr()
                server.close()
                raise RigError(f"netlink agent did not start: {line!r} {err.strip()[-400:]}")
            self._server = server
        return self._server

    def close(self) -> None:
        for proc in (self._server, self._launching):
            if proc is not None:
                proc.close()
        self._server = self._launching = None

    def call(self, op: str, **args: Any) -> Any:
        server = self._start()
        server.write(json.dumps({"op": op, **args}).encode() + b"\n")
        line = server.readline(timeout=self.timeout)
        if line is None:
            self._server = None
            raise RigError(f"netlink agent ended: {server.stderr().strip()[-400:]}")
        reply = json.loads(line)
        if "error" in reply:
            raise NetlinkError(op, reply["error"], reply.get("errno"))
        return reply["result"]

    def regions(self) -> list[RegionInfo]:
        return [
            RegionInfo(
                f"{r['bus']}/{r['dev']}/{r['name']}", r["size"], r["snapshots"], r["max_snapshots"]
            )
            for r in self.call("regions")
        ]

    def region(self, handle: str) -> RegionInfo:
        """REGION_GET of one region: unknown names fail as the kernel says."""
        r = self.call("show", region=handle)
        return RegionInfo(
            f"{r['bus']}/{r['dev']}/{r['name']}", r["size"], r["snapshots"], r["max_snapshots"]
        )

    def chunks(
        self,
        handle: str,
        snapshot: int | None,
        addr: int | None = None,
        length: int | None = None,
        direct: bool = False,
    ) -> list[tuple[int, bytes]]:
        """direct: send DEVLINK_ATTR_REGION_DIRECT (a read of the live region, kernel >= 6.2)."""
        reply = self.call(
            "read", region=handle, snapshot=snapshot, addr=addr, length=length, direct=direct
        )
        return [(c["addr"], bytes.fromhex(c["data"])) for c in reply]

    def read(
        self,
        handle: str,
        snapshot: int | None,
        addr: int | None = None,
        length: int | None = None,
        direct: bool = False,
    ) -> bytes:
        chunks = self.chunks(handle, snapshot, addr, length, direct)
        out = bytearray()
        start = chunks[0][0] if chunks else 0
        for a, data in chunks:
            if a != start + len(out):
                raise RigError(f"netlink read of {handle}: chunk at {a:#x} is not contiguous")
            out += data
        return bytes(out)

    def delete(self, handle: str, snapshot: int | None) -> None:
        self.call("del", region=handle, snapshot=snapshot)

    def new(self, handle: str, snapshot: int | None = None) -> None:
        self.call("new", region=handle, snapshot=snapshot)

    def notifications_during(
        self, trigger: Callable[[], T], count: int, timeout: float
    ) -> tuple[T, list[dict[str, Any]]]:
        """Listen on devlink's config group, run `trigger`, then collect the next `count`
        region notifications (listening first, so none can be missed)."""
        watch = self.watch(count)
        try:
            result = trigger()
            return result, [watch.next(timeout) for _ in range(count)]
        finally:
            watch.close()

    def watch(self, count: int) -> RegionWatch:
        """Start listening for `count` REGION_NEW/DEL notifications; returns once listening."""
        self._ensure_uploaded()
        bg = self.ssh.start(f"python3 {REMOTE} watch --count {count}")
        line = bg.readline(timeout=self.timeout)
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
