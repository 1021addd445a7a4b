"""Traffic across the card: port 1 to port 2 through the cable the device model wires.

Each port's netdev goes into a network namespace of its own in the guest (`rig-a` holds
port 1's with 10.99.0.1/24, `rig-b` port 2's with 10.99.0.2/24), so the only route between
the two addresses is out of one port and into the other: frames cross the driver's send
path, the model's cable and the driver's receive path. No address is ever set outside these
namespaces and no host network is touched. The guest half is guest/programs/traffic_guest.py,
one process for a Traffic's whole life (`serve`): each stream's ends are children it forks
into their namespaces, so a fault under traffic starts no python3 (~0.4 s each under TCG).

    with Traffic(rig) as t:
        print(t.ping(100))                 # synchronous: busybox ping in rig-a
        t.start_tcp(64 << 20)              # bounded: a deadline and an idle limit
        ...                                # e.g. rig.mlx4.fault("catas"); t.restore()
        result = t.wait()                  # both ends' bytes, SHA-256 and longest gap
        result.check()                     # KernelFailure saying where it broke

Across a reset. mlx4_en unregisters its netdevs and the driver registers new ones in the
initial namespace (where guest/init/rig-init's netup watcher brings them up); the namespaces,
the sockets in them and their addresses' owners stay. `restore()` — the same guest step as
the set-up, idempotent — moves the new netdevs back into their namespaces with the same
addresses, so the sender's retransmits of the open connection get through and the transfer
completes with the same hash. It runs after `rig.mlx4.fault()` returns rather than from a
monitor in the guest racing it: `fault()` checks the driver's own recovery (the netdevs back
with the same names and MACs, up with carrier, in the initial namespace, on the netup
watcher's word), and moving them away mid-check would blur what failed. The cost is a few
seconds more of gap (the SSH round trip, and TCP's backed-off retransmit timer), which the
gap figures show. Re-creating the namespaces instead would drop the connection.

`Traffic` works on anything with sh/spawn/put and a dev_handle: a `Rig`, or a rig kept up by
`rig up` in another process (`rig.instance.Instance.guest()`).
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol

from guest.programs.traffic_guest import Payload
from rig.errors import KernelFailure, MachineError, RigError
from rig.provision.guestfiles import STDLIB_PYTHON, guest_program
from rig.vm.ssh import Background, Result

if TYPE_CHECKING:
    from rig.mlx4 import FaultCycle
    from rig.rig import Rig

logger = logging.getLogger(__name__)

SCRIPT = guest_program("traffic_guest.py")
REMOTE = "/run/rig/traffic_guest.py"
NETNS = ("rig-a", "rig-b")  # port 1's, port 2's
ADDRS = ("10.99.0.1", "10.99.0.2")
# The yardstick: the same stream over a veth pair in the same guest (no card, no model), the
# most the guest itself carries under TCG (rig bench's traffic section).
VETH_NETNS = ("rig-va", "rig-vb")
VETH_ADDRS = ("10.98.0.1", "10.98.0.2")
PREFIX = 24
TCP_PORT = 5201
# Bytes per second the card carries at least under TCG on a busy 2-core host (about 2 MB/s
# measured idle): a transfer's deadline is its size at this rate plus the reset allowance.
SLOWEST_RATE = 250_000
RESET_ALLOWANCE = 300.0  # s: a fault's reset and re-probe (cmd-timeout: 60 s + reload)
IDLE_LIMIT = 240.0  # s without a byte moving before an end gives up and says where
PATH_TIMEOUT = 90.0
# What a sender told to end soon still sends (Traffic.end_soon): a stream cut short after a
# fault carries this much across the rebuilt path first: ~1,450 full-size frames after the
# retransmits (16 MiB until session 12 took 2-4 s of every such fault; 4 MiB until session 19).
TAIL = 2 << 20
# A transfer taken through a fault (fault_under_traffic) is paced at FAULT_RATE bytes a
# second of the guest's clock: it only has to be running when the driver acts (a catas waits
# for its 5 s poll), and unpaced the guest, which hashes nothing, pushed ~60 MiB a guest
# second (the card answers each doorbell before guest time goes on): up to 260 MiB a fault,
# every byte host CPU in the model. Paced, the guest idles between sends (cheap on warp).
# Against 2 MiB/s and a 4 MiB tail, twelve catas cycles alternating on one rig: QEMU + model
# 1.82 CPU-s a cycle against 2.34 (docs/clock.md, session 19).
FAULT_RATE = 1 << 20
# Its most: it ends TAIL bytes after the recovery; at FAULT_RATE this outlasts a catas (5 s
# poll, reset, path restored: ~12 s of guest time) five times over.
TRAFFIC_MOST = 64 << 20
# What `ethtool -S` shows that the results keep: mlx4_en's software counters (the rings')
# and the port's (DUMP_ETH_STATS from the model, refreshed by the driver once a second).
COUNTERS = (
    "rx_packets",
    "tx_packets",
    "rx_bytes",
    "tx_bytes",
    "rx_errors",
    "tx_errors",
    "rx_dropped",
    "rx_fifo_errors",  # the port's RdropOvflw: frames that found no receive WQE
    "tx_dropped",
    "rx_packets_phy",
    "tx_packets_phy",
    "rx_bytes_phy",
    "tx_bytes_phy",
    "rx_csum_good",  # the card's checksum verdict taken (CHECKSUM_UNNECESSARY)
    "rx_csum_none",  # checked in software
)


class Guest(Protocol):
    """What traffic needs of a guest: a `Rig` is one, `Instance.guest()` another."""

    dev_handle: str

    def sh(self, command: str, timeout: float = ..., check: bool = ...) -> Result: ...

    def spawn(self, command: str) -> Background: ...

    def put(self, local: Path, remote: str) -> None: ...


@dataclass(frozen=True)
class PingResult:
    transmitted: int
    received: int
    loss_pct: float
    rtt_ms: dict[str, float]  # min, avg, max (empty when nothing came back)

    def __str__(self) -> str:
        rtt = "/".join(f"{self.rtt_ms[k]:.3f}" for k in ("min", "avg", "max") if k in self.rtt_ms)
        return (
            f"{self.transmitted} transmitted, {self.received} received, "
            f"{self.loss_pct:g}% loss" + (f", rtt min/avg/max {rtt} ms" if rtt else "")
        )


def parse_ping(text: str) -> PingResult:
    """busybox ping's summary (the guest has no iputils)."""
    m = re.search(r"(\d+) packets transmitted, (\d+) packets received, (\d+)% packet loss", text)
    if m is None:
        raise RigError(f"no ping summary in: {text.strip()[-300:]!r}")
    rtt = re.search(r"min/avg/max = ([\d.]+)/([\d.]+)/([\d.]+) ms", text)
    times = dict(zip(("min", "avg", "max"), map(float, rtt.groups()), strict=True)) if rtt else {}
    return PingResult(int(m[1]), int(m[2]), float(m[3]), times)


@dataclass(frozen=True)
class Gap:
    """The longest time one end saw no byte move: how long, at which byte, and when (the
    guest's CLOCK_REALTIME, seconds)."""

    s: float
    at_byte: int
    t_from: float
    t_to: float

    def around(self, t: float) -> bool:
        return self.t_from <= t <= self.t_to


@dataclass(frozen=True)
class End:
    """What one end of the TCP stream handled."""

    bytes: int
    # Of the bytes this end handled: computed here from the stream's seed (the guest hashes
    # nothing, traffic_guest.py); "" for a receiver whose bytes differ from the sender's.
    sha256: str
    elapsed: float
    gap: Gap
    error: str = ""
    stopped: bool = False  # the sender ended early, as asked (Traffic.end_soon)
    mismatch_at: int | None = None  # the receiver's first byte unlike the sender's

    @classmethod
    def parse(cls, line: str, who: str, payload: Payload) -> End:
        """One end's JSON line, for a stream of `payload`'s content."""
        try:
            d = json.loads(line)
            g = d["gap"]
            nbytes = int(d["bytes"])
            mismatch = None if d.get("mismatch_at") is None else int(d["mismatch_at"])
            content = int(d["content"])
        except (ValueError, KeyError, TypeError) as e:
            raise RigError(f"the {who} in the guest said {line!r}, not its result") from e
        if content != payload.fingerprint():
            raise RigError(
                f"the {who}'s content is not the host's for the same seed (fingerprint "
                f"{content:#010x}, here {payload.fingerprint():#010x}): the guest's Python "
                "draws other bytes from it, so what crossed cannot be checked here"
            )
        return cls(
            nbytes,
            "" if mismatch is not None else payload.sha256(nbytes),
            float(d["elapsed"]),
            Gap(float(g["s"]), int(g["at_byte"]), float(g["from"]), float(g["to"])),
            str(d.get("error", "")),
            bool(d.get("stopped", False)),
            mismatch,
        )


Counters = dict[str, dict[str, int]]  # netdev -> counter -> value


def _proc_table(text: str, prefix: str) -> dict[str, str]:
    """One protocol's counters from /proc/net/snmp or /proc/net/netstat: its two lines
    starting with `prefix`, a line of names, then one of values ({} if they are not there)."""
    lines = [line.split()[1:] for line in text.splitlines() if line.startswith(prefix)]
    if len(lines) < 2 or len(lines[0]) != len(lines[1]):
        return {}
    return dict(zip(lines[0], lines[1], strict=True))


def retrans_segs(snmp: str) -> int:
    """RetransSegs from /proc/net/snmp's Tcp lines."""
    try:
        return int(_proc_table(snmp, "Tcp:")["RetransSegs"])
    except (KeyError, ValueError):
        raise RigError(f"no TCP RetransSegs in /proc/net/snmp's {snmp[:200]!r}") from None


# The sender's TcpExt counters (/proc/net/netstat) a result keeps, to tell why TCP sent
# segments again: a retransmission timeout resends the whole unacknowledged window at once,
# a loss shows as fast retransmits (SACK recovery), a tail loss probe as one.
TCP_EXT = (
    "TCPTimeouts",
    "TCPSpuriousRTOs",
    "TCPLossProbes",
    "TCPFastRetrans",
    "TCPSackRecovery",
    "TCPLostRetransmit",
)


def tcp_ext(netstat: str) -> dict[str, int]:
    """TCP_EXT's counters from /proc/net/netstat's TcpExt lines; those the kernel does not
    have are left out."""
    values = _proc_table(netstat, "TcpExt:")
    if not values:
        raise RigError(f"no TcpExt counters in /proc/net/netstat's {netstat[:200]!r}")
    return {name: int(values[name]) for name in TCP_EXT if name in values}


@dataclass
class TcpResult:
    """One TCP transfer from port 1's namespace to port 2's."""

    requested: int
    sent: End
    received: End
    counters_before: Counters = field(default_factory=dict)
    counters_after: Counters = field(default_factory=dict)
    netdevs: tuple[str, str] = ("", "")  # sender's, receiver's (as the path named them)
    # Segments the sender's TCP sent again (RetransSegs in its namespace) during the transfer.
    # Not only loss: with the guest's RTT ~1 ms, its tail loss probe (2 RTTs) fires before
    # the receiver's delayed ACK of a stream's last segment, so a lossless transfer has ~1.
    retransmits: int = 0
    # How much each of the sender's TCP_EXT counters grew during the transfer.
    tcp_ext: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problem()

    def problem(self) -> str:
        """Why the transfer failed, where it broke; "" when it did not."""
        for who, end in (("receiver", self.received), ("sender", self.sent)):
            if end.error:
                return f"the {who} stopped: {end.error}"
        # A sender asked to end early sets the length; the receiver must have it all.
        length = self.sent.bytes if self.sent.stopped else self.requested
        if not (self.sent.bytes == self.received.bytes == length <= self.requested):
            asked = f"{self.requested} bytes asked" + (" (then fewer)" if self.sent.stopped else "")
            return f"{asked}, {self.sent.bytes} sent, {self.received.bytes} received"
        if self.received.mismatch_at is not None:
            return (
                f"the bytes received differ from those sent from byte {self.received.mismatch_at}"
            )
        if self.sent.sha256 != self.received.sha256:
            return (
                f"SHA-256 differs: sent {self.sent.sha256}, received {self.received.sha256} "
                f"({length} bytes each)"
            )
        return ""

    def check(self) -> None:
        problem = self.problem()
        if problem:
            raise KernelFailure(f"TCP across the card: {problem}")

    def delta(self, netdev: str, counter: str) -> int:
        """How much `counter` of `netdev` grew during the transfer (meaningless across a
        reset: the re-created netdev counts from zero)."""
        return self.counters_after[netdev][counter] - self.counters_before[netdev][counter]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Server:
    """traffic_guest.py serve over one SSH channel: requests go out as JSON lines, replies
    come back tagged with their request's id and wait in an inbox until asked for (a
    stream's lines and the server's answers interleave)."""

    def __init__(self, proc: Background) -> None:
        self.proc = proc
        self._next = 0
        self._inbox: dict[int, list[dict[str, Any]]] = {}

    def send(self, op: str, **args: Any) -> int:
        self._next += 1
        self.proc.write((json.dumps({"id": self._next, "op": op, **args}) + "\n").encode())
        return self._next

    def reply(self, rid: int, timeout: float, what: str) -> dict[str, Any]:
        """The next line answering request `rid`; RigError if none comes in `timeout`."""
        deadline = time.monotonic() + timeout
        while not self._inbox.get(rid):
            left = deadline - time.monotonic()
            try:
                line = self.proc.readline(timeout=max(0.0, left))
            except MachineError as e:
                raise RigError(f"traffic_guest.py: {what}: no answer within {timeout:.0f} s") from e
            if line is None:
                raise RigError(f"traffic_guest.py ended ({what}): {self.proc.stderr()[-400:]}")
            try:
                msg = json.loads(line)
                self._inbox.setdefault(int(msg.pop("id")), []).append(msg)
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                raise RigError(f"traffic_guest.py said {line!r}, not an answer") from e
        return self._inbox[rid].pop(0)

    def call(self, op: str, timeout: float, **args: Any) -> dict[str, Any]:
        """A request and its one answer; RigError with what the guest said if it failed."""
        msg = self.reply(self.send(op, **args), timeout, op)
        if "error" in msg:
            raise RigError(f"traffic_guest.py {op}: {msg['error']}")
        return msg

    def close(self) -> None:
        self.proc.close()  # its stdin ends: it stops what still runs and exits


class Traffic:
    """The traffic path across the card, and a bounded stream on it; a context manager."""

    def __init__(self, guest: Guest, *, port: int = TCP_PORT, veth: bool = False) -> None:
        """veth: a veth pair between the two namespaces instead of the card's ports."""
        self.guest = guest
        self.port = port
        self.veth = veth
        self.netns, self.addrs = (VETH_NETNS, VETH_ADDRS) if veth else (NETNS, ADDRS)
        self.path: dict[str, str] = {}  # netns -> netdev
        self._server: _Server | None = None
        self._recv: int | None = None  # the running stream's ends: their request ids
        self._send: int | None = None
        self._requested = 0
        self._payload: Payload | None = None  # the running stream's content, once one runs
        self._timeout = 0.0
        self._counters_before: Counters = {}
        self._tcp_before: dict[str, int] = {}  # the sender's TCP counters (_sample)

    # --- the path -----------------------------------------------------------------------

    def __enter__(self) -> Traffic:
        try:
            self.setup()
        except BaseException:
            self.close()  # a half-made path (one netdev moved) must not outlive the error
            raise
        return self

    def __exit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def server(self) -> _Server:
        """The guest program, started on first use and kept until close()."""
        if self._server is None:
            self.guest.sh(f"mkdir -p {Path(REMOTE).parent}", timeout=30)
            self.guest.put(SCRIPT, REMOTE)
            self._server = _Server(self.guest.spawn(f"exec {STDLIB_PYTHON} {REMOTE} serve"))
        return self._server

    def setup(self) -> dict[str, str]:
        """Put port 1's netdev in rig-a and port 2's in rig-b, addressed and up with carrier;
        idempotent, and after a reset it moves the re-created netdevs back (`restore`)."""
        reply = self.server.call(
            "path",
            PATH_TIMEOUT + 30,
            bdf="" if self.veth else self.guest.dev_handle.split("/", 1)[1],
            netns=list(self.netns),
            addrs=[f"{a}/{PREFIX}" for a in self.addrs],
            deadline=PATH_TIMEOUT,
        )
        self.path = dict(reply["path"])
        logger.info(
            "traffic path: "
            + ", ".join(
                f"{dev} in {ns} ({a})"
                for (ns, dev), a in zip(self.path.items(), self.addrs, strict=True)
            )
        )
        return self.path

    restore = setup

    def close(self) -> None:
        """Stop what still runs, move the netdevs back to the initial namespace, up."""
        try:
            try:
                self.stop()
            finally:
                self.server.call(
                    "unpath",
                    PATH_TIMEOUT + 30,
                    netns=list(self.netns),
                    veth=self.veth,
                    deadline=PATH_TIMEOUT,
                )
                self.path = {}
        finally:
            if self._server is not None:
                self._server.close()
                self._server = None

    def stop(self) -> None:
        """Stop the stream that still runs, if one does (e.g. a caller that gave up on it)."""
        if self._send is not None or self._recv is not None:
            self._send = self._recv = None
            self.server.call("stop", 30)

    def _netdev(self, i: int) -> tuple[str, str]:
        if not self.path:
            raise RigError("the traffic path is not set up (use Traffic as a context manager)")
        ns = self.netns[i]
        return ns, self.path[ns]

    # --- what crosses it ----------------------------------------------------------------

    def ping(self, count: int = 100, interval: float = 0.05) -> PingResult:
        """busybox ping from port 1's namespace to port 2's address (bounded by -w)."""
        ns, _ = self._netdev(0)
        bound = int(count * interval + 10)
        to = self.addrs[1]
        res = self.guest.sh(
            f"ip netns exec {ns} busybox ping -q -c {count} -i {interval} -w {bound} {to}",
            timeout=bound + 30,
            check=False,
        )
        return parse_ping(res.stdout + res.stderr)

    def counters(self) -> Counters:
        """`ethtool -S` of both netdevs, in their namespaces (the COUNTERS kept)."""
        return self._sample()[0]

    def _sample(self) -> tuple[Counters, dict[str, int]]:
        """The counters, and the sender's namespace's TCP RetransSegs and TCP_EXT: one
        command, each netdev's block headed by ethtool's "NIC statistics:" line, then
        /proc/net/snmp's two Tcp lines and /proc/net/netstat's two TcpExt lines (names,
        values)."""
        ends = [self._netdev(i) for i in (0, 1)]
        stats = [f"ip netns exec {ns} ethtool -S {dev}" for ns, dev in ends]
        snmp = (
            f"ip netns exec {ends[0][0]} "
            "grep -h -e '^Tcp:' -e '^TcpExt:' /proc/net/snmp /proc/net/netstat"
        )
        text = self.guest.sh(" && ".join([*stats, snmp]), timeout=60).stdout
        ethtool, _, tcp = text.partition("\nTcp:")
        blocks = ethtool.split("NIC statistics:")[1:]
        if len(blocks) != len(ends):
            raise RigError(f"ethtool -S printed {len(blocks)} blocks for {len(ends)} netdevs")
        out: Counters = {}
        for (_, dev), block in zip(ends, blocks, strict=True):
            stats_of = dict(
                (k.strip(), v.strip())
                for k, _, v in (line.partition(":") for line in block.splitlines()[1:])
            )
            out[dev] = {c: int(stats_of[c]) for c in COUNTERS if c in stats_of}
        return out, {"RetransSegs": retrans_segs("Tcp:" + tcp), **tcp_ext(tcp)}

    def clock_offset(self) -> float:
        """Guest CLOCK_REALTIME (the gaps' clock) minus host time.monotonic(), within half
        a round trip to the guest program: to place a host event such as a fault's
        injection on it."""
        t0 = time.monotonic()
        guest = float(self.server.call("time", 30)["time"])
        return guest - (t0 + time.monotonic()) / 2

    def start_tcp(
        self,
        nbytes: int,
        *,
        seed: int = 0,
        deadline: float | None = None,
        rate: float = 0.0,
    ) -> None:
        """Start sending `nbytes` from rig-a to rig-b; returns once the connection is up.
        deadline: seconds for the whole transfer (default: from its size, with room for a
        fault's reset)."""
        if self._send is not None:
            raise RigError("a TCP transfer is already running; wait() for it first")
        self._netdev(1)
        deadline = deadline or nbytes / SLOWEST_RATE + RESET_ALLOWANCE
        self._requested, self._timeout = nbytes, deadline + 60
        if self._payload is None or self._payload.seed != seed:
            self._payload = Payload(seed)  # 4 MiB drawn from the seed: kept for the next stream
        self._counters_before, self._tcp_before = self._sample()
        common = {"port": self.port, "nbytes": nbytes, "deadline": deadline, "idle": IDLE_LIMIT}
        # Both ends start at once: the sender retries its connect until the receiver listens.
        server = self.server
        self._recv = server.send("recv", netns=self.netns[1], seed=seed, **common)
        self._send = server.send(
            "send",
            netns=self.netns[0],
            addr=self.addrs[1],
            seed=seed,
            tail=TAIL,
            rate=rate,
            **common,
        )
        for rid, expect in ((self._recv, "listening"), (self._recv, "connected")):
            said = server.reply(rid, 60, f"start_tcp: {expect}")
            if expect not in said:
                raise RigError(f"the TCP stream did not start: {expect}? it said {said}")
        logger.info(f"TCP: {nbytes} bytes {self._netdev(0)[1]} -> {self._netdev(1)[1]}")

    def end_soon(self) -> None:
        """Tell the sender to send TAIL more bytes and close (SIGUSR1): a stream sized to
        outlast a fault need not run its whole length once the fault is over. Nothing
        happens if it has ended already."""
        if self._send is None:
            raise RigError("no TCP transfer is running; start_tcp() first")
        self.server.call("end_soon", 30, stream=self._send)

    def wait(self) -> TcpResult:
        """Wait for both ends (each is bounded by its deadline) and collect what they saw."""
        if self._send is None or self._recv is None:
            raise RigError("no TCP transfer is running; start_tcp() first")
        try:
            received = self._result(self._recv, "receiver")
            sent = self._result(self._send, "sender")
        finally:
            self.stop()
        after, tcp = self._sample()
        return TcpResult(
            self._requested,
            sent,
            received,
            self._counters_before,
            after,
            (self._netdev(0)[1], self._netdev(1)[1]),
            tcp["RetransSegs"] - self._tcp_before["RetransSegs"],
            {k: tcp[k] - self._tcp_before.get(k, 0) for k in TCP_EXT if k in tcp},
        )

    def _result(self, rid: int, who: str) -> End:
        said = self.server.reply(rid, self._timeout, f"the {who}'s result")
        assert self._payload is not None  # start_tcp() set it
        return End.parse(json.dumps(said), who, self._payload)

    def tcp(self, nbytes: int, **kw: Any) -> TcpResult:
        """A whole transfer, start to result."""
        self.start_tcp(nbytes, **kw)
        return self.wait()


@dataclass(frozen=True)
class FaultGap:
    """The receiver's longest stall placed against a fault, in seconds from the injection
    (the guest's clock): its last byte before, its first byte after, and the driver's
    recovery. A stream stops when the driver resets the port, not at the injection (a catas
    waits for the driver's 5 s poll), and resumes once the path is restored after recovery."""

    s: float
    last_byte_s: float  # the last byte before the stall, from the injection
    first_byte_s: float  # the first byte after it
    recovered_s: float  # the driver's recovery (FaultCycle.t_recovered)
    at_byte: int
    spans_recovery: bool  # the stream was stalled when the driver recovered: the fault hit it

    @classmethod
    def of(cls, gap: Gap, injected: float, recovered: float) -> FaultGap:
        return cls(
            gap.s,
            gap.t_from - injected,
            gap.t_to - injected,
            recovered - injected,
            gap.at_byte,
            gap.around(recovered),
        )


@dataclass
class FaultUnderTraffic:
    cycle: FaultCycle
    result: TcpResult
    gap: FaultGap

    def as_dict(self) -> dict[str, Any]:
        """What report.json's `traffic` holds (docs/report.md)."""
        r = self.result
        return {
            "requested_bytes": r.requested,
            "path": dict(zip(NETNS, r.netdevs, strict=True)),
            "sent": asdict(r.sent),
            "received": asdict(r.received),
            "sha256_match": r.sent.sha256 == r.received.sha256,
            "gap_around_fault": asdict(self.gap),
            "counters_after": r.counters_after,
            "retransmits": r.retransmits,
            "ok": r.ok,
            "problem": r.problem(),
        }


def fault_under_traffic(
    rig: Rig,
    traffic: Traffic,
    nbytes: int,
    kind: str = "catas",
    rate: float = FAULT_RATE,
    **fault: Any,
) -> FaultUnderTraffic:
    """Take a fault through the driver's error flow (rig.mlx4.fault) with a TCP transfer of
    at most `nbytes` running (at `rate` bytes a guest second), restore the path once the
    driver has recovered, tell the sender to end TAIL bytes later, and wait for the transfer
    to end. Checks nothing about the transfer: the result says how it went.

    The transfer starts right before the injection, once the fault's listeners are up: their
    start-up takes seconds under TCG, more with the stream eating the vCPU, and a stream
    started earlier could be over by the time the fault hits."""
    # The stall is on the guest's clock. The injection (a host event) is placed there with
    # the guest's offset taken right before it. The recovery is the driver's own line, already
    # on the guest's clock (a catas); a reload's end is the host's, placed with an offset
    # taken right after it: on the warped clock (rig.vm.clock) guest time runs ahead whenever
    # the guest idles, during the fault most of all, so one offset cannot place both, and a
    # late one misplaces the recovery.
    offsets: list[float] = []

    def start() -> None:
        traffic.start_tcp(nbytes, rate=rate)
        offsets.append(traffic.clock_offset())

    cycle = rig.mlx4.fault(kind, before_inject=start, **fault)
    recovered = cycle.guest_recovered
    if recovered is None:
        recovered = cycle.t_recovered + traffic.clock_offset()
    traffic.restore()
    traffic.end_soon()  # its size outlasts the fault; once the path is back, TAIL bytes prove it
    result = traffic.wait()
    injected = cycle.t_fault + offsets[0]
    gap = FaultGap.of(result.received.gap, injected, recovered)
    return FaultUnderTraffic(cycle, result, gap)
