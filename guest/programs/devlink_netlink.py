"""devlink regions over generic netlink, with pyroute2 — runs inside the guest.

pyroute2 (0.9.7) knows the devlink family and the region commands but its attribute table
stops at DEVLINK_ATTR_PORT_SPLITTABLE, so REGION_MAX_SNAPSHOTS and REGION_DIRECT decode as
unknown attributes. `devlinkmsg` extends the table in kernel order (include/uapi/linux/
devlink.h: the enum is ABI, position == attribute number), in pyroute2's own style, so it
can be offered upstream as is.

This file depends on the standard library and pyroute2 only: the rig uploads it into the
guest and runs it there (`python3 netlink.py regions`), printing JSON on stdout.
"""

from __future__ import annotations

import argparse
import base64
import errno
import importlib.util
import json
import os
import select
import signal
import socket
import struct
import sys
import time
import types
import zlib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO


def _without_package_init(package: str) -> None:
    """Let `package`'s submodules be imported without running its __init__.py.

    pyroute2's __init__ imports the whole library (IPRoute, NDB, IPDB, conntrack), about
    half of the agent's start-up under TCG; the netlink modules used here import what they
    need themselves. Only when run as a program: a process that imports this module may
    want the whole package."""
    if package in sys.modules:
        return
    spec = importlib.util.find_spec(package)
    if spec is None or spec.submodule_search_locations is None:
        raise ImportError(f"no package {package!r} (the guest's root fs installs pyroute2)")
    stub = types.ModuleType(package)
    stub.__spec__ = spec
    stub.__path__ = list(spec.submodule_search_locations)
    sys.modules[package] = stub


if __name__ == "__main__":
    _without_package_init("pyroute2")

from pyroute2.netlink import NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NLMSG_DONE  # noqa: E402
from pyroute2.netlink.devlink import devlinkcmd  # noqa: E402
from pyroute2.netlink.exceptions import NetlinkError  # noqa: E402
from pyroute2.netlink.generic import GenericNetlinkSocket  # noqa: E402

DEVLINK_CMD_REGION_GET = 42
DEVLINK_CMD_REGION_NEW = 44
DEVLINK_CMD_REGION_DEL = 45
DEVLINK_CMD_REGION_READ = 46
DEVLINK_GENL_MCGRP_CONFIG = "config"

# Attributes after DEVLINK_ATTR_PORT_SPLITTABLE (148), in uapi order.
_MISSING_ATTRS = (
    ("DEVLINK_ATTR_PORT_EXTERNAL", "uint8"),
    ("DEVLINK_ATTR_PORT_CONTROLLER_NUMBER", "uint32"),
    ("DEVLINK_ATTR_FLASH_UPDATE_STATUS_TIMEOUT", "uint64"),
    ("DEVLINK_ATTR_FLASH_UPDATE_OVERWRITE_MASK", "none"),  # bitfield32
    ("DEVLINK_ATTR_RELOAD_ACTION", "uint8"),
    ("DEVLINK_ATTR_RELOAD_ACTIONS_PERFORMED", "none"),  # bitfield32
    ("DEVLINK_ATTR_RELOAD_LIMITS", "none"),  # bitfield32
    ("DEVLINK_ATTR_DEV_STATS", "none"),
    ("DEVLINK_ATTR_RELOAD_STATS", "none"),
    ("DEVLINK_ATTR_RELOAD_STATS_ENTRY", "none"),
    ("DEVLINK_ATTR_RELOAD_STATS_LIMIT", "uint8"),
    ("DEVLINK_ATTR_RELOAD_STATS_VALUE", "uint32"),
    ("DEVLINK_ATTR_REMOTE_RELOAD_STATS", "none"),
    ("DEVLINK_ATTR_RELOAD_ACTION_INFO", "none"),
    ("DEVLINK_ATTR_RELOAD_ACTION_STATS", "none"),
    ("DEVLINK_ATTR_PORT_PCI_SF_NUMBER", "uint32"),
    ("DEVLINK_ATTR_RATE_TYPE", "uint16"),
    ("DEVLINK_ATTR_RATE_TX_SHARE", "uint64"),
    ("DEVLINK_ATTR_RATE_TX_MAX", "uint64"),
    ("DEVLINK_ATTR_RATE_NODE_NAME", "asciiz"),
    ("DEVLINK_ATTR_RATE_PARENT_NODE_NAME", "asciiz"),
    ("DEVLINK_ATTR_REGION_MAX_SNAPSHOTS", "uint32"),
    ("DEVLINK_ATTR_LINECARD_INDEX", "uint32"),
    ("DEVLINK_ATTR_LINECARD_STATE", "uint8"),
    ("DEVLINK_ATTR_LINECARD_TYPE", "asciiz"),
    ("DEVLINK_ATTR_LINECARD_SUPPORTED_TYPES", "none"),
    ("DEVLINK_ATTR_NESTED_DEVLINK", "none"),
    ("DEVLINK_ATTR_SELFTESTS", "none"),
    ("DEVLINK_ATTR_RATE_TX_PRIORITY", "uint32"),
    ("DEVLINK_ATTR_RATE_TX_WEIGHT", "uint32"),
    ("DEVLINK_ATTR_REGION_DIRECT", "flag"),
)
assert devlinkcmd.nla_map[-1][0] == "DEVLINK_ATTR_PORT_SPLITTABLE", "pyroute2 table changed"


class devlinkmsg(devlinkcmd):  # type: ignore[misc]  # pyroute2 naming
    nla_map = devlinkcmd.nla_map + _MISSING_ATTRS

    class devlink(devlinkcmd.devlink):  # type: ignore[misc]
        nla_map = devlinkcmd.devlink.nla_map + _MISSING_ATTRS


@dataclass
class Region:
    bus: str
    dev: str
    name: str
    size: int
    max_snapshots: int | None
    snapshots: list[int] = field(default_factory=list)

    @property
    def handle(self) -> str:
        return f"{self.bus}/{self.dev}/{self.name}"


@dataclass
class Chunk:
    addr: int
    data: bytes


class DevlinkError(Exception):
    def __init__(self, op: str, err: NetlinkError) -> None:
        self.errno: int = err.code
        super().__init__(f"{op}: {errno.errorcode.get(err.code, err.code)} ({err})")


NLMSG_HDRLEN = 16


def dump_done_errno(data: bytes | bytearray, offset: int = 0) -> int:
    """The errno an NLMSG_DONE message at `offset` carries (0: the dump succeeded).

    A dump the kernel refuses once started (unknown region or snapshot, a start beyond the
    end) ends with NLMSG_DONE whose payload is -errno. pyroute2 takes any NLMSG_DONE for a
    normal end of dump, so without this check a failed read looks like an empty one.
    """
    (length,) = struct.unpack_from("=I", data, offset)
    if length < NLMSG_HDRLEN + 4:
        return 0
    (code,) = struct.unpack_from("=i", data, offset + NLMSG_HDRLEN)
    return -code if code < 0 else 0


NLM_F_CAPPED = 0x100
NLM_F_ACK_TLVS = 0x200
NLMSGERR_ATTR_MSG = 1


def dump_done_message(data: bytes | bytearray, offset: int = 0) -> str | None:
    """The extended-ack message ("Requested snapshot does not exist") an NLMSG_DONE at
    `offset` carries after its status, if any; pyroute2 does not read it from a DONE."""
    return _ack_message(data, offset, offset + NLMSG_HDRLEN + 4)


def error_message(data: bytes | bytearray, offset: int = 0) -> str | None:
    """The extended-ack message of an NLMSG_ERROR at `offset`: its TLVs follow the status
    and the request it answers, whole or (NLM_F_CAPPED) its header only."""
    (_, _, flags) = struct.unpack_from("=IHH", data, offset)
    echoed = NLMSG_HDRLEN
    if not flags & NLM_F_CAPPED:
        (echoed,) = struct.unpack_from("=I", data, offset + NLMSG_HDRLEN + 4)
    return _ack_message(data, offset, offset + NLMSG_HDRLEN + 4 + ((echoed + 3) & ~3))


def _ack_message(data: bytes | bytearray, offset: int, pos: int) -> str | None:
    length, _, flags = struct.unpack_from("=IHH", data, offset)
    if not flags & NLM_F_ACK_TLVS:
        return None
    try:
        for kind, start, stop in _attrs(data, pos, offset + length):
            if kind == NLMSGERR_ATTR_MSG:
                return bytes(data[start:stop]).rstrip(b"\0").decode(errors="replace")
    except LookupError:  # a malformed TLV: the status alone still tells the error
        pass
    return None


NLA_TYPE_MASK = 0x3FFF  # without NLA_F_NESTED and NLA_F_NET_BYTEORDER


def _attrs(data: bytes | bytearray, pos: int, end: int) -> Iterator[tuple[int, int, int]]:
    """(type, start, end) of each netlink attribute of data[pos:end], payload bounds."""
    while pos + 4 <= end:
        nla_len, nla_type = struct.unpack_from("=HH", data, pos)
        if nla_len < 4 or pos + nla_len > end:
            raise LookupError(f"a netlink attribute of length {nla_len} at {pos} overruns")
        yield nla_type & NLA_TYPE_MASK, pos + 4, pos + nla_len
        pos += (nla_len + 3) & ~3


NETLINK_GENERIC = 16
SOL_NETLINK = 270
NETLINK_EXT_ACK = 11
NLMSG_ERROR = 2
GENL_HDRLEN = 4
RECV_BUFFER = 1 << 16  # netlink_dump() fills at most 32 KiB a recv
DEVLINK_ATTR_REGION_CHUNKS = 93  # uapi positions, as in devlinkmsg.nla_map
DEVLINK_ATTR_REGION_CHUNK = 94
DEVLINK_ATTR_REGION_CHUNK_DATA = 95
DEVLINK_ATTR_REGION_CHUNK_ADDR = 96


def region_chunks(data: bytes | bytearray, pos: int, end: int) -> list[Chunk]:
    """The chunks of one REGION_READ reply, whose attributes are data[pos:end]:
    DEVLINK_ATTR_REGION_CHUNKS { DEVLINK_ATTR_REGION_CHUNK { CHUNK_DATA, CHUNK_ADDR } ... }
    (devlink_nl_cmd_region_read_chunk_fill in the kernel)."""
    chunks = []
    for kind, start, stop in _attrs(data, pos, end):
        if kind != DEVLINK_ATTR_REGION_CHUNKS:
            continue
        for ckind, cstart, cstop in _attrs(data, start, stop):
            if ckind != DEVLINK_ATTR_REGION_CHUNK:
                continue
            addr, payload = None, None
            for akind, astart, astop in _attrs(data, cstart, cstop):
                if akind == DEVLINK_ATTR_REGION_CHUNK_DATA:
                    payload = bytes(data[astart:astop])
                elif akind == DEVLINK_ATTR_REGION_CHUNK_ADDR:
                    (addr,) = struct.unpack_from("=Q", data, astart)
            if addr is None or payload is None:
                raise LookupError("a region chunk without its address or its data")
            chunks.append(Chunk(addr, payload))
    return chunks


def encode_chunks(chunks: list[Chunk]) -> dict[str, Any]:
    """A READ reply for the host: each chunk's address and size, and their data joined and
    deflated. The guest's sshd carries ~10 MB/s under TCG: a 1 MiB snapshot as hex took it
    ~0.3 s, deflated it is a fraction (a dump is mostly zeros and repeats)."""
    data = zlib.compress(b"".join(c.data for c in chunks), 1)
    return {
        "addrs": [c.addr for c in chunks],
        "sizes": [len(c.data) for c in chunks],
        "deflated": base64.b64encode(data).decode(),
    }


Answer = Callable[[str], dict[str, Any]]


def kmsg_line(record: bytes, pattern: str) -> str | None:
    """The rig's line for a /dev/kmsg record whose message holds `pattern` (else None):
    its printk time in µs, the guest's CLOCK_REALTIME minus CLOCK_MONOTONIC now, the message
    (rig.devlink.agent.KmsgRecord parses it). A record is "prefix;message" plus dictionary lines
    (" SUBSYSTEM=pci", " DEVICE=+pci:..."): only the message counts."""
    head, _, body = record.decode(errors="replace").partition(";")
    message = body.split("\n", 1)[0]
    if pattern not in message:
        return None
    usec = head.split(",")[2]
    return f"{usec} {time.time() - time.monotonic():.6f} {message.strip()}"


class KernelLog:
    """/dev/kmsg, for the nth record holding a pattern: from boot (the device replays the
    log, then blocks for new records), or from now. One read() returns one record and needs
    a large buffer (hence not a line reader)."""

    def __init__(self, pattern: str, nth: int = 1, from_now: bool = True) -> None:
        self.pattern = pattern
        self.left = nth
        self.fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
        if from_now:
            os.lseek(self.fd, 0, os.SEEK_END)  # the records before do not count

    def fileno(self) -> int:
        return self.fd

    def found(self) -> str | None:
        """kmsg_line of the nth matching record, once it has come (else None: select on
        this for more)."""
        while True:
            try:
                record = os.read(self.fd, 65536)
            except BlockingIOError:
                return None
            except BrokenPipeError:  # EPIPE: records were overwritten while we read; go on
                continue
            if (line := kmsg_line(record, self.pattern)) is not None:
                self.left -= 1
                if not self.left:
                    return line

    def wait(self) -> str:
        """Block until found()."""
        while (line := self.found()) is None:
            select.select([self], [], [])
        return line

    def close(self) -> None:
        os.close(self.fd)


def kmsg_wait(pattern: str, nth: int) -> str:
    """kmsg_line of the nth record since boot holding `pattern`, once the kernel logs it."""
    log = KernelLog(pattern, nth, from_now=False)
    try:
        return log.wait()
    finally:
        log.close()


class RegionClient:
    """REGION_GET / READ / NEW / DEL, and REGION_NEW/DEL notifications."""

    def __init__(self) -> None:
        # ext_ack: the kernel's own words ("Requested snapshot does not exist") with errors.
        self.sock = GenericNetlinkSocket(ext_ack=True)
        self.sock.bind("devlink", devlinkmsg)

    def close(self) -> None:
        self.sock.close()

    def _request(self, op: str, cmd: int, attrs: list[tuple[str, Any]], flags: int) -> list[Any]:
        msg = devlinkmsg()
        msg["cmd"] = cmd
        msg["version"] = 1
        msg["attrs"] = attrs
        failed: list[tuple[int, str | None]] = []

        def check_done(m: Any) -> bool:
            if m["header"]["type"] == NLMSG_DONE:
                code = dump_done_errno(m.data, m.offset)
                if code:
                    failed.append((code, dump_done_message(m.data, m.offset)))
            return False  # keep the message: pyroute2 still ends the dump on it

        try:
            replies = list(
                self.sock.nlm_request(
                    msg, msg_type=self.sock.prid, msg_flags=flags, callback=check_done
                )
            )
        except NetlinkError as e:
            raise DevlinkError(op, e) from e
        if failed:
            raise DevlinkError(op, NetlinkError(*failed[0]))
        return replies

    @staticmethod
    def _handle(bus: str, dev: str, region: str) -> list[tuple[str, Any]]:
        return [
            ("DEVLINK_ATTR_BUS_NAME", bus),
            ("DEVLINK_ATTR_DEV_NAME", dev),
            ("DEVLINK_ATTR_REGION_NAME", region),
        ]

    def regions(self) -> list[Region]:
        replies = self._request(
            "region show", DEVLINK_CMD_REGION_GET, [], NLM_F_REQUEST | NLM_F_DUMP
        )
        return [_region(m) for m in replies]

    def show(self, bus: str, dev: str, region: str) -> Region:
        """REGION_GET for one region (the kernel's doit, not the dump)."""
        attrs = self._handle(bus, dev, region)
        replies = self._request("region show", DEVLINK_CMD_REGION_GET, attrs, NLM_F_REQUEST)
        found = [_region(m) for m in replies if m.get_attr("DEVLINK_ATTR_REGION_NAME")]
        if len(found) != 1:
            raise LookupError(f"REGION_GET {bus}/{dev}/{region}: {len(found)} replies")
        return found[0]

    def read(
        self,
        bus: str,
        dev: str,
        region: str,
        snapshot: int | None,
        addr: int | None = None,
        length: int | None = None,
        direct: bool = False,
    ) -> list[Chunk]:
        """REGION_READ as a dump: the kernel answers in chunks (256 bytes in 6.1). direct sets
        DEVLINK_ATTR_REGION_DIRECT (a read of the live region, kernel >= 6.2)."""
        attrs = self._handle(bus, dev, region)
        if snapshot is not None:
            attrs.append(("DEVLINK_ATTR_REGION_SNAPSHOT_ID", snapshot))
        if direct:
            attrs.append(("DEVLINK_ATTR_REGION_DIRECT", True))
        if addr is not None:
            attrs.append(("DEVLINK_ATTR_REGION_CHUNK_ADDR", addr))
        if length is not None:
            attrs.append(("DEVLINK_ATTR_REGION_CHUNK_LEN", length))
        return self._dump_chunks("region read", DEVLINK_CMD_REGION_READ, attrs)

    def _dump_chunks(self, op: str, cmd: int, attrs: list[tuple[str, Any]]) -> list[Chunk]:
        """A REGION_READ dump, its replies walked here rather than by pyroute2's parser.

        A 1 MiB snapshot comes as 4,096 messages; pyroute2 builds a tree of attribute objects
        for each, over 90% of the read's guest CPU under TCG. pyroute2 still resolves the
        family and encodes the request; the replies are read off a socket of this process's
        own and only the four attributes a chunk has are looked at."""
        msg = devlinkmsg()
        msg["cmd"] = cmd
        msg["version"] = 1
        msg["attrs"] = attrs
        msg["header"]["type"] = self.sock.prid
        msg["header"]["flags"] = NLM_F_REQUEST | NLM_F_DUMP
        msg["header"]["sequence_number"] = seq = 1
        msg.encode()
        chunks: list[Chunk] = []
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_GENERIC) as sock:
            sock.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
            sock.bind((0, 0))
            sock.send(msg.data)
            while True:
                data, _, flags, _ = sock.recvmsg(RECV_BUFFER)
                if flags & socket.MSG_TRUNC:
                    raise LookupError(f"{op}: a netlink message over {RECV_BUFFER} bytes")
                pos = 0
                while pos + NLMSG_HDRLEN <= len(data):
                    length, kind, _, got_seq = struct.unpack_from("=IHHI", data, pos)
                    if length < NLMSG_HDRLEN or got_seq != seq:
                        raise LookupError(f"{op}: a stray netlink message (type {kind})")
                    if kind == NLMSG_DONE:
                        code = dump_done_errno(data, pos)
                        if code:
                            raise DevlinkError(op, NetlinkError(code, dump_done_message(data, pos)))
                        return chunks
                    if kind == NLMSG_ERROR:
                        (code,) = struct.unpack_from("=i", data, pos + NLMSG_HDRLEN)
                        raise DevlinkError(op, NetlinkError(-code, error_message(data, pos)))
                    chunks += region_chunks(data, pos + NLMSG_HDRLEN + GENL_HDRLEN, pos + length)
                    pos += (length + 3) & ~3

    def delete(self, bus: str, dev: str, region: str, snapshot: int | None) -> None:
        attrs = self._handle(bus, dev, region)
        if snapshot is not None:
            attrs.append(("DEVLINK_ATTR_REGION_SNAPSHOT_ID", snapshot))
        self._request("region del", DEVLINK_CMD_REGION_DEL, attrs, NLM_F_REQUEST | NLM_F_ACK)

    def new(self, bus: str, dev: str, region: str, snapshot: int | None = None) -> None:
        attrs = self._handle(bus, dev, region)
        if snapshot is not None:
            attrs.append(("DEVLINK_ATTR_REGION_SNAPSHOT_ID", snapshot))
        self._request("region new", DEVLINK_CMD_REGION_NEW, attrs, NLM_F_REQUEST | NLM_F_ACK)

    def watch(
        self,
        count: int,
        serving: tuple[Lines, Answer] | None = None,
        out: TextIO | None = None,
        kmsg: str | None = None,
    ) -> list[dict[str, Any]]:
        """Print the next `count` region notifications, one JSON line each, and return them;
        with `kmsg`, also the first kernel log record from now that holds it, as
        {"kmsg": kmsg_line(...)} (the driver's recovery line after a catas: no second
        program to start in the guest), and go on until both have come.
        While serving (the request lines and how to answer one), requests keep being answered
        meanwhile, and {"op": "unwatch"} (or the host's hang-up) ends the watch early.

        On a socket of its own, joined to the `config` group only for the watch: requests
        on `self.sock` must not meet notifications."""
        sock = GenericNetlinkSocket()
        log = KernelLog(kmsg) if kmsg is not None else None
        try:
            sock.bind("devlink", devlinkmsg)
            sock.add_membership(DEVLINK_GENL_MCGRP_CONFIG)
            _say(out, {"listening": True})  # tells the host it may act now
            events: list[dict[str, Any]] = []
            while len(events) < count or log is not None:
                sources: list[Any] = [sock] if len(events) < count else []
                if log is not None:
                    sources.append(log)
                if serving is not None:
                    if serving[0].wait_readable(*sources):
                        line = serving[0].readline()
                        if line is None or _op(line) == "unwatch":
                            break
                        _say(out, serving[1](line))
                        continue
                else:
                    select.select(sources, [], [])
                if log is not None and (found := log.found()) is not None:
                    _say(out, {"kmsg": found})
                    log.close()
                    log = None
                if len(events) >= count or not _readable(sock):
                    continue
                for m in sock.get():
                    cmd = m["cmd"]
                    if cmd not in (DEVLINK_CMD_REGION_NEW, DEVLINK_CMD_REGION_DEL):
                        continue
                    events.append(
                        {
                            "cmd": "new" if cmd == DEVLINK_CMD_REGION_NEW else "del",
                            "dev": f"{m.get_attr('DEVLINK_ATTR_BUS_NAME')}/"
                            f"{m.get_attr('DEVLINK_ATTR_DEV_NAME')}",
                            "region": m.get_attr("DEVLINK_ATTR_REGION_NAME"),
                            "snapshot": m.get_attr("DEVLINK_ATTR_REGION_SNAPSHOT_ID"),
                        }
                    )
                    _say(out, events[-1])
            return events
        finally:
            sock.close()
            if log is not None:
                log.close()


def _readable(sock: Any) -> bool:
    """Whether `sock` has something to read now."""
    return bool(select.select([sock], [], [], 0)[0])


def _say(out: TextIO | None, reply: dict[str, Any]) -> None:
    """One JSON line to the host (stdout unless `out`), at once."""
    out = out or sys.stdout
    out.write(json.dumps(reply) + "\n")
    out.flush()


def _op(line: str) -> object:
    try:
        req = json.loads(line)
    except ValueError:
        return None
    return req.get("op") if isinstance(req, dict) else None


class Lines:
    """Lines from a file descriptor, read unbuffered by Python so that select() tells the
    truth about what is left (sys.stdin's buffer would hide a line already read)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buf = b""
        self.eof = False

    def has_line(self) -> bool:
        return b"\n" in self.buf or (self.eof and bool(self.buf))

    def _fill(self) -> None:
        data = os.read(self.fd, 65536)
        self.buf += data
        self.eof = not data

    def readline(self) -> str | None:
        """The next line, None at the end."""
        while not self.has_line() and not self.eof:
            self._fill()
        if not self.buf:
            return None
        line, _, self.buf = self.buf.partition(b"\n")
        return line.decode()

    def wait_readable(self, *others: Any) -> bool:
        """Block until one of `others` (sockets, files) or these lines have something;
        whether a line has come (or the end: the host hung up)."""
        if self.has_line() or self.eof:
            return True
        ready, _, _ = select.select([self.fd, *others], [], [])
        if self.fd in ready:
            self._fill()
        return self.has_line() or self.eof


def _region(m: Any) -> Region:
    snaps_nest = m.get_attr("DEVLINK_ATTR_REGION_SNAPSHOTS")
    snaps = []
    if snaps_nest is not None:
        for s in snaps_nest.get_attrs("DEVLINK_ATTR_REGION_SNAPSHOT"):
            snaps.append(s.get_attr("DEVLINK_ATTR_REGION_SNAPSHOT_ID"))
    return Region(
        bus=m.get_attr("DEVLINK_ATTR_BUS_NAME"),
        dev=m.get_attr("DEVLINK_ATTR_DEV_NAME"),
        name=m.get_attr("DEVLINK_ATTR_REGION_NAME"),
        size=m.get_attr("DEVLINK_ATTR_REGION_SIZE"),
        max_snapshots=m.get_attr("DEVLINK_ATTR_REGION_MAX_SNAPSHOTS"),
        snapshots=sorted(snaps),
    )


def _split(handle: str) -> tuple[str, str, str]:
    bus, dev, region = handle.split("/", 2) if handle.count("/") >= 2 else ("", "", handle)
    if not (bus and dev and region) or "/" in region:
        raise ValueError(f"bad region handle {handle!r}: expected BUS/DEV/REGION")
    return bus, dev, region


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="op", required=True)
    sub.add_parser("regions")
    for op in ("show", "read", "del", "new"):
        sp = sub.add_parser(op)
        sp.add_argument("region", help="BUS/DEV/REGION, e.g. pci/0000:00:03.0/cr-space")
        if op != "show":
            sp.add_argument("--snapshot", type=int)
        if op == "read":
            sp.add_argument("--addr", type=int)
            sp.add_argument("--length", type=int)
            sp.add_argument("--direct", action="store_true")
    sub.add_parser("serve", help="answer JSON requests on stdin, one per line")
    sp = sub.add_parser("listen", help="serve each connection to 127.0.0.1:PORT (a fork each)")
    sp.add_argument("--port", type=int, required=True)
    sp = sub.add_parser("watch")
    sp.add_argument("--count", type=int, default=1)
    sp.add_argument("--kmsg", help="also the first kernel log record from now holding this")
    args = ap.parse_args(argv)

    if args.op == "listen":
        return listen(args.port)
    client = RegionClient()
    try:
        if args.op == "serve":
            return serve(client)
        if args.op == "watch":
            client.watch(args.count, kmsg=args.kmsg)
            return 0
        reply = handle(client, vars(args))
    finally:
        client.close()
    print(json.dumps(reply))
    return 1 if "error" in reply else 0


def handle(client: RegionClient, req: dict[str, Any]) -> dict[str, Any]:
    """One request ({"op": ..., "region": ..., ...}) to one reply ({"result"} or {"error"})."""
    op = req.get("op")
    try:
        if op == "regions":
            return {"result": [asdict(r) for r in client.regions()]}
        if op == "kmsg":
            return {"result": kmsg_wait(str(req["pattern"]), int(req.get("nth", 1)))}
        handle_ = _split(str(req.get("region", "")))
        snapshot = req.get("snapshot")
        if op == "show":
            return {"result": asdict(client.show(*handle_))}
        if op == "read":
            chunks = client.read(
                *handle_, snapshot, req.get("addr"), req.get("length"), bool(req.get("direct"))
            )
            return {"result": encode_chunks(chunks)}
        if op == "del":
            client.delete(*handle_, snapshot)
            return {"result": {"deleted": snapshot}}
        if op == "new":
            client.new(*handle_, snapshot)
            return {"result": {"created": snapshot}}
        return {"error": f"unknown op {op!r}", "errno": errno.EINVAL}
    except DevlinkError as e:
        return {"error": str(e), "errno": e.errno}
    except ValueError as e:
        return {"error": str(e), "errno": errno.EINVAL}
    except LookupError as e:  # the kernel answered, but not as devlink should
        return {"error": str(e), "errno": None}


def serve(client: RegionClient, lines: Lines | None = None, out: TextIO | None = None) -> int:
    """JSON requests on stdin (or `lines`), one reply line each on stdout (or `out`): one
    Python start-up, seconds of guest CPU under TCG, for many requests.

    {"op": "watch", "count": N} answers {"listening": true}, then prints each notification
    ({"cmd": ...}) as it comes while requests keep being answered, and ends with
    {"watched": [...]} after N notifications or at {"op": "unwatch"}. With "kmsg": TEXT it
    also prints {"kmsg": ...} for the first kernel log record holding TEXT, and ends only once
    that has come too. An unwatch that comes after the watch ended (it raced the last
    notification) is not answered."""
    _say(out, {"ready": True})
    lines = lines or Lines(sys.stdin.fileno())

    def answer(line: str) -> dict[str, Any]:
        try:
            req = json.loads(line)
        except ValueError as e:
            return {"error": f"bad request: {e}", "errno": errno.EINVAL}
        if not isinstance(req, dict):
            return {"error": "bad request: not an object", "errno": errno.EINVAL}
        if req.get("op") == "watch":
            return {"error": "already watching", "errno": errno.EBUSY}
        return handle(client, req)

    while (line := lines.readline()) is not None:
        op = _op(line)
        if op == "unwatch":
            continue
        if op == "watch":
            req = json.loads(line)
            events = client.watch(
                int(req.get("count", 1)), serving=(lines, answer), out=out, kmsg=req.get("kmsg")
            )
            reply = {"watched": events}
        else:
            reply = answer(line)
        _say(out, reply)
    return 0


def listen(port: int) -> int:
    """Serve each connection to 127.0.0.1:`port` as `serve` serves stdin, in a child forked
    from this already started Python: a saved VM starts this before it is saved, and the
    host reaches it through SSH (a direct-tcpip channel), so that no rig restored from the
    save waits for an agent to start."""
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the children are reaped by the kernel
    with socket.create_server(("127.0.0.1", port)) as server:
        while True:
            conn, _ = server.accept()
            if os.fork() == 0:
                server.close()
                status = 1
                try:
                    with conn, conn.makefile("w", encoding="utf-8") as out:
                        client = RegionClient()
                        try:
                            status = serve(client, Lines(conn.fileno()), out)
                        finally:
                            client.close()
                except OSError:  # the host hung up
                    pass
                finally:
                    os._exit(status)
            conn.close()


if __name__ == "__main__":
    sys.exit(main())
