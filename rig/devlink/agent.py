"""The host side of `netlink.py`: upload it into the guest, run it there, parse its JSON.

One agent process serves a whole session (requests on its stdin, one JSON reply line each):
starting Python and importing pyroute2 take seconds of guest CPU under TCG. A saved VM has
its agent already listening (`saved_service`): a rig restored from it connects to it through
SSH instead, and starts one only if that fails.
"""

from __future__ import annotations

import base64
import json
import logging
import shlex
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rig.devlink.cli import RegionInfo, assemble_chunks
from rig.errors import RigError
from rig.provision.guestfiles import guest_program
from rig.vm.saved import GuestService
from rig.vm.ssh import Background, GuestSsh

logger = logging.getLogger(__name__)

SCRIPT = guest_program("devlink_netlink.py")
REMOTE = "/run/rig/devlink_netlink.py"
PORT = 7011  # the saved guest's listening agent, on its loopback


def saved_service() -> GuestService:
    """The agent as a saved VM runs it: listening on PORT from before the save."""
    return GuestService(
        "netlink agent",
        SCRIPT,
        REMOTE,
        f"setsid python3 {REMOTE} listen --port {PORT} < /dev/null > /dev/null 2>&1 &",
        PORT,
    )


@dataclass(frozen=True)
class KmsgRecord:
    """A kernel log record, as the agent's watch saw it (devlink_netlink.kmsg_line)."""

    message: str
    printk_s: float  # its printk time: seconds since boot on the kernel's local_clock
    realtime_s: float  # the same instant on the guest's CLOCK_REALTIME (the stream gaps' clock)

    @classmethod
    def parse(cls, line: str) -> KmsgRecord:
        usec, realtime_minus_monotonic, *message = line.split(" ", 2)
        try:
            printk_s = int(usec) / 1e6
            # local_clock and CLOCK_MONOTONIC both count from boot on the TSC.
            realtime_s = printk_s + float(realtime_minus_monotonic)
        except ValueError:
            raise RigError(f"the netlink agent's kernel log line is {line!r}") from None
        return cls(message[0] if message else "", printk_s, realtime_s)


class NetlinkError(RigError):
    def __init__(self, op: str, message: str, errno: int | None) -> None:
        self.errno = errno
        super().__init__(f"netlink {op}: {message}")


class NetlinkAgent:
    """devlink regions through pyroute2 generic netlink, running inside the guest."""

    def __init__(
        self, ssh: GuestSsh, timeout: float = 120.0, as_user: str = "", port: int | None = None
    ) -> None:
        """as_user: a command prefix that drops privileges (e.g. `setpriv --reuid=65534 ...`)
        to run the agent as another user. port: where in the guest an agent listens (a
        saved VM's), tried before one is started."""
        self.ssh = ssh
        self.timeout = timeout
        self.as_user = as_user
        self.port = port
        self._uploaded = False
        self._server: Background | None = None
        self._watch: RegionWatch | None = None  # the server's watch, while it runs

    def _ensure_uploaded(self) -> None:
        if not self._uploaded:
            self.ssh.run(f"mkdir -p {Path(REMOTE).parent}", timeout=30)
            self.ssh.put(SCRIPT, REMOTE)
            self._uploaded = True

    def _start(self) -> Background:
        """The agent's server: the listening one's if there is one, else started (Python and
        pyroute2: seconds under TCG)."""
        if self._server is None:
            server = self._connect() if self.port is not None and not self.as_user else None
            if server is None:
                self._ensure_uploaded()
                server = self.ssh.start(f"{self.as_user} python3 {REMOTE} serve".strip())
                self._await(server, {"ready": True}, "netlink agent", server.close)
            self._server = server
        return self._server

    def _connect(self) -> Background | None:
        """A session of the guest's listening agent, or None (logged) if it does not answer."""
        assert self.port is not None
        try:
            server = self.ssh.forward(self.port)
            self._await(server, {"ready": True}, "listening netlink agent", server.close)
        except RigError as e:
            if not self.ssh.connected:
                raise
            logger.info(f"{str(e).splitlines()[0]}; starting an agent")
            self.port = None  # it is gone for good: the next sessions start their own
            return None
        return server

    def close(self) -> None:
        """Stop the server; the next request starts a new one."""
        if self._server is not None:
            self._server.close()
        self._server = None
        self._watch = None

    def _reply(self, server: Background, timeout: float | None = None) -> dict[str, Any]:
        """The server's next line; its end stops it (close) and raises."""
        line = server.readline(timeout=self.timeout if timeout is None else timeout)
        if line is None:
            self.close()
            raise RigError(f"netlink agent ended: {server.stderr().strip()[-400:]}")
        reply: dict[str, Any] = json.loads(line)
        return reply

    def call(self, op: str, _timeout: float | None = None, **args: Any) -> Any:
        server = self._start()
        server.write(json.dumps({"op": op, **args}).encode() + b"\n")
        while True:  # a running watch's lines may come before the reply: they are its own
            reply = self._reply(server, _timeout)
            if self._watch is None or not self._watch.take(reply):
                break
        if "error" in reply:
            raise NetlinkError(op, reply["error"], reply.get("errno"))
        return reply["result"]

    def regions(self) -> list[RegionInfo]:
        return [_region_info(r) for r in self.call("regions")]

    def kmsg(self, pattern: str, nth: int = 1, timeout: float | None = None) -> KmsgRecord:
        """The nth kernel log record since boot holding `pattern` (a plain substring), once
        the guest's kernel has logged it."""
        return KmsgRecord.parse(self.call("kmsg", _timeout=timeout, pattern=pattern, nth=nth))

    def region(self, handle: str) -> RegionInfo:
        """REGION_GET of one region: unknown names fail as the kernel says."""
        return _region_info(self.call("show", region=handle))

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
        return decode_chunks(reply)

    def read(
        self,
        handle: str,
        snapshot: int | None,
        addr: int | None = None,
        length: int | None = None,
        direct: bool = False,
    ) -> bytes:
        chunks = self.chunks(handle, snapshot, addr, length, direct)
        start = chunks[0][0] if chunks else 0
        return assemble_chunks(chunks, start, f"netlink read of {handle}")

    def delete(self, handle: str, snapshot: int | None) -> None:
        self.call("del", region=handle, snapshot=snapshot)

    def new(self, handle: str, snapshot: int | None = None) -> None:
        self.call("new", region=handle, snapshot=snapshot)

    def watch(self, count: int, kmsg: str | None = None) -> RegionWatch:
        """Start listening for `count` REGION_NEW/DEL notifications and, with `kmsg`, the
        first kernel log record from now that holds it (RegionWatch.kmsg); returns once
        listening.

        The agent's own server listens, and answers requests meanwhile: no second Python
        start-up in the guest (seconds of guest CPU that, before a fault, delay it). An agent
        running as another user watches from a process of its own, as root: joining
        devlink's multicast group may need privileges that user lacks."""
        if self.as_user:
            self._ensure_uploaded()
            also = f" --kmsg {shlex.quote(kmsg)}" if kmsg is not None else ""
            bg = self.ssh.start(f"python3 {REMOTE} watch --count {count}{also}")
            self._await(bg, {"listening": True}, "netlink watcher", bg.close)
            return RegionWatch(bg, count, bg.close, kmsg is not None)
        if self._watch is not None:
            raise RigError("netlink watch: the agent is already watching")
        server = self._start()
        request = {"op": "watch", "count": count, "kmsg": kmsg}
        server.write(json.dumps(request).encode() + b"\n")
        self._await(server, {"listening": True}, "netlink agent's watch", self.close)
        watch = RegionWatch(server, count, lambda: self._end_watch(watch), kmsg is not None)
        self._watch = watch
        return watch

    def _await(
        self, bg: Background, first: dict[str, Any], what: str, fail: Callable[[], None]
    ) -> None:
        """`bg`'s first line must be `first`; else `fail` is called and RigError raised."""
        line = bg.readline(timeout=self.timeout)
        if line is None or json.loads(line) != first:
            err = bg.stderr()
            fail()
            raise RigError(f"{what} did not start: {line!r} {err.strip()[-400:]}")

    def _end_watch(self, watch: RegionWatch) -> None:
        """A watch that has not seen all its notifications is ended with a line of its own;
        the lines up to the watch's end are read past."""
        server, self._watch = self._server, None
        if server is None or watch.ended:
            return
        try:
            if not watch.complete():
                server.write(b'{"op": "unwatch"}\n')
            while not watch.ended:
                watch.take(self._reply(server))
        except (RigError, OSError, ValueError):
            self.close()  # the next request starts a new one
            raise


def decode_chunks(reply: dict[str, Any]) -> list[tuple[int, bytes]]:
    """The chunks of the agent's READ reply (devlink_netlink.encode_chunks)."""
    try:
        data = zlib.decompress(base64.b64decode(reply["deflated"], validate=True))
        addrs, sizes = reply["addrs"], reply["sizes"]
    except (KeyError, TypeError, ValueError, zlib.error) as e:
        raise RigError(f"netlink agent: a read reply that does not decode: {e}") from None
    if len(addrs) != len(sizes) or sum(sizes) != len(data):
        raise RigError(
            f"netlink agent: a read reply of {len(data)} bytes for {len(addrs)} addresses and "
            f"{len(sizes)} sizes summing to {sum(sizes)}"
        )
    chunks, at = [], 0
    for addr, size in zip(addrs, sizes, strict=True):
        chunks.append((addr, data[at : at + size]))
        at += size
    return chunks


def _region_info(r: dict[str, Any]) -> RegionInfo:
    """A region as the guest agent describes it (devlink_netlink.py's Region)."""
    return RegionInfo(
        f"{r['bus']}/{r['dev']}/{r['name']}", r["size"], r["snapshots"], r["max_snapshots"]
    )


class RegionWatch:
    """Region notifications as the guest's netlink socket receives them, and the kernel log
    record asked for: lines of the agent's output ({"cmd": ...} each, {"kmsg": ...} once;
    {"watched": [...]} at the end), read by `next` and `kmsg` or, when they come before a
    request's reply, kept by `take` for them."""

    def __init__(
        self, bg: Background, count: int, end: Callable[[], None], kmsg: bool = False
    ) -> None:
        self._bg = bg
        self._count = count
        self._end = end
        self._pending: list[dict[str, Any]] = []
        self._kmsg_wanted = kmsg
        self._kmsg: str | None = None
        self.events: list[dict[str, Any]] = []
        self.ended = False  # the guest's watch is over

    def take(self, line: dict[str, Any]) -> bool:
        """Whether `line` is this watch's (and then kept)."""
        if "cmd" in line:
            self._pending.append(line)
        elif "kmsg" in line:
            self._kmsg = str(line["kmsg"])
        elif "watched" in line:
            self.ended = True
        else:
            return False
        return True

    def complete(self) -> bool:
        have = len(self.events) + len(self._pending) >= self._count
        return have and (self._kmsg is not None or not self._kmsg_wanted)

    def next(self, timeout: float) -> dict[str, Any]:
        """The next notification."""
        self._until(lambda: bool(self._pending), timeout)
        event = self._pending.pop(0)
        self.events.append(event)
        return event

    def kmsg(self, timeout: float) -> KmsgRecord:
        """The kernel log record asked for (watch(kmsg=...))."""
        self._until(lambda: self._kmsg is not None, timeout)
        assert self._kmsg is not None
        return KmsgRecord.parse(self._kmsg)

    def _until(self, done: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            line = None if self.ended else self._bg.readline(max(0.0, deadline - time.monotonic()))
            if line is None:
                raise RigError(f"netlink watcher ended: {self._bg.stderr().strip()[-400:]}")
            if not self.take(json.loads(line)):
                raise RigError(f"netlink watcher: not its line: {line.strip()[:200]}")

    def close(self) -> None:
        self._end()
