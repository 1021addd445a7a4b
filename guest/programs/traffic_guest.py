"""The guest half of `rig traffic`: the path across the card, and one bounded TCP stream on it.

    python3 traffic_guest.py path --bdf BDF|--veth --netns A,B --addrs 10.99.0.1/24,10.99.0.2/24
    python3 traffic_guest.py unpath --netns A,B [--veth]
    python3 traffic_guest.py recv --port P --bytes N --seed K --deadline S [--idle S]
    python3 traffic_guest.py send --to ADDR --port P --bytes N --seed K --deadline S [--idle S]
                                  [--tail T] [--rate R]
    python3 traffic_guest.py serve

`path` puts the card's netdevs found in the initial namespace (port 1's, port 2's, by
dev_port) into namespaces A and B, gives each its address and brings it up, then waits until
both are operstate UP (carrier across the cable); netdevs already in their namespace are left
there, so it is also how the path is restored after a reset re-created them in the initial
namespace. `unpath` moves them back, up, and deletes the namespaces. Both print one JSON line.
With --veth the two ends are a veth pair made in the namespaces instead (the yardstick: the
guest's own ceiling), and `unpath` just deletes the namespaces, and the pair with them.

Run under `ip netns exec`: the receiver in port 2's namespace, the sender in port 1's, so
the only path between them is the card's cable. Each side prints one JSON line at the end —
bytes, elapsed time and the longest time without progress (its length, the byte offset it
happened at, and its start and end on the guest's CLOCK_REALTIME, so the host can place it
against a fault). Neither end hashes: under TCG SHA-256 costs the guest ~46 ms a MiB. The
stream's content is a function of its seed (Payload), so the receiver compares each byte it
gets with what the seed says was sent (~1 ms a MiB; a difference is reported with its offset,
`mismatch_at`), and the host computes each end's SHA-256 from the seed and its byte count
(Payload.sha256), once the fingerprint of the content each end printed (Payload.fingerprint)
matches its own. The receiver prints {"listening": true} once it accepts connections and
{"connected": true} once the sender is there.

A sender can be paced (--rate, bytes a second of the guest's clock): between its sends the
guest idles, which on the warped clock costs next to nothing. A stream that only has to be
running when the driver's catas poll (every 5 s of guest time) finds a fault is paced: at full
speed the guest, which hashes nothing, moved ~60 MiB a guest second (the card answers each
doorbell before guest time goes on), every byte of it host CPU in the model.

A stream can end early on purpose: SIGUSR1 tells the sender to send --tail more bytes and
then close (its result says "stopped"); the receiver ends at the close, and the host, which
compares the two ends' byte counts and hashes, knows whether an early close was asked for.

`serve` does all of the above for a rig's whole use of the path in one process: python3's
start-up costs ~0.4 s of host time under TCG, and a fault under traffic started three (two
ends and the path's restore) per fault. Requests come on stdin, one JSON object a line with
an "id" and an "op" (path, unpath, recv, send, end_soon, stop, time) and the subcommand's
arguments; every line it prints carries the id of the request it answers. A stream runs in
a child forked into its namespace (setns: it only needs sockets there), which prints what
the subcommand prints under the request's id; `end_soon` names that id and is its SIGUSR1.
At the end of stdin the streams still running are stopped (SIGTERM) and it exits.

Nothing runs unbounded: every wait ends at --deadline (whole run) or --idle (no byte moved for
that long). A run that ends early still prints its JSON, with "error" saying where it broke;
the exit status is then 1. The content is seeded pseudo-random data, the same on every run:
POOL random MiBs in turn, each 1 MiB chunk starting with its own index, so no two chunks are
alike (a misplaced or repeated frame changes the hash).

Standard library only: the rig uploads this file and runs it with the guest's python3.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import select
import signal
import socket
import subprocess
import sys
import time
import zlib
from typing import Any

CHUNK = 1 << 20  # generated and hashed per MiB; sent and received in smaller pieces
# Random MiBs a stream cycles through. Not one per chunk: random.randbytes costs the guest
# ~33 ms a MiB under TCG (0.53 s for 16 MiB, measured in the rig's guest), about a fifth of
# a transfer's CPU; the chunk's index, stamped at its start, keeps chunks apart.
POOL = 4
STAMP = 8  # bytes of the index
PIECE = 64 * 1024
CONNECT_RETRY = 0.2  # s between refused connects (the listener starts in another process)


class Payload:
    """The stream's content: chunk i is random MiB i % POOL with i in its first bytes."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        source = random.Random(seed)
        self.pool = [source.randbytes(CHUNK) for _ in range(POOL)]
        self._fingerprint: int | None = None
        self._digests: dict[int, str] = {}  # by byte count: both ends of a whole stream agree

    def chunk(self, index: int, size: int = CHUNK) -> bytes:
        return (index.to_bytes(STAMP, "big") + self.pool[index % POOL][STAMP:])[:size]

    def fingerprint(self) -> int:
        """CRC-32 of the pool: the same in two Pythons that draw the same bytes from the seed."""
        if self._fingerprint is None:
            crc = 0
            for part in self.pool:
                crc = zlib.crc32(part, crc)
            self._fingerprint = crc
        return self._fingerprint

    def sha256(self, nbytes: int) -> str:
        """SHA-256 of the stream's first `nbytes`."""
        if nbytes not in self._digests:
            digest = hashlib.sha256()
            for index in range(-(-nbytes // CHUNK)):
                digest.update(self.chunk(index, min(CHUNK, nbytes - index * CHUNK)))
            self._digests[nbytes] = digest.hexdigest()
        return self._digests[nbytes]


class Progress:
    """Bytes moved, and the longest stretch without any (where and when it was)."""

    def __init__(self) -> None:
        self.bytes = 0
        self.t0 = time.monotonic()
        self.last = self.t0
        self.gap = 0.0
        self.gap_at = 0
        self.gap_from = 0.0  # CLOCK_REALTIME, comparable with the host's `date` in the guest
        self.gap_to = 0.0

    def moved(self, n: int) -> None:
        now = time.monotonic()
        if now - self.last > self.gap:
            self.gap = now - self.last
            self.gap_at = self.bytes
            wall = time.time()
            self.gap_from, self.gap_to = wall - self.gap, wall
        self.last = now
        self.bytes += n

    def idle(self) -> float:
        return time.monotonic() - self.last

    def result(self, error: str = "", said: dict[str, object] | None = None) -> dict[str, object]:
        out: dict[str, object] = {
            **(said or {}),
            "bytes": self.bytes,
            "elapsed": time.monotonic() - self.t0,
            "gap": {
                "s": self.gap,
                "at_byte": self.gap_at,
                "from": self.gap_from,
                "to": self.gap_to,
            },
        }
        if error:
            out["error"] = error
        return out


_ID: object = None  # under `serve`: the request this process answers


def _say(obj: dict[str, object]) -> None:
    if _ID is not None:
        obj = {"id": _ID, **obj}
    # One write per line, each shorter than PIPE_BUF: a stream's child and the server share
    # stdout without tearing each other's lines.
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def _timeout(deadline: float, idle: float, progress: Progress) -> float:
    """How long the next socket call may block: to whichever limit comes first."""
    return max(0.0, min(deadline - time.monotonic(), idle - progress.idle()))


def _why(deadline: float, progress: Progress, what: str) -> str:
    if time.monotonic() >= deadline:
        return f"deadline reached after {progress.bytes} bytes {what}"
    return f"no progress for {progress.idle():.1f} s at byte {progress.bytes} ({what})"


class Check:
    """The receiver's side of the content: each byte compared with the seed's as it comes,
    the offset of the first that differs remembered."""

    def __init__(self, payload: Payload) -> None:
        self.payload = payload
        self.index = -1
        self.chunk = b""
        self.mismatch_at: int | None = None

    def update(self, offset: int, data: bytes) -> None:
        pos = 0
        while pos < len(data) and self.mismatch_at is None:
            index, within = divmod(offset + pos, CHUNK)
            if index != self.index:
                self.index, self.chunk = index, self.payload.chunk(index)
            piece = data[pos : pos + CHUNK - within]
            expected = self.chunk[within : within + len(piece)]
            if piece != expected:  # bytes == bytes is a memcmp: ~1 ms a MiB under TCG
                first = next(
                    i for i, (a, b) in enumerate(zip(piece, expected, strict=True)) if a != b
                )
                self.mismatch_at = offset + pos + first
            pos += len(piece)

    def said(self) -> dict[str, object]:
        out: dict[str, object] = {"content": self.payload.fingerprint()}
        if self.mismatch_at is not None:
            out["mismatch_at"] = self.mismatch_at
        return out


def receive(port: int, nbytes: int, deadline: float, idle: float, seed: int = 0) -> int:
    check = Check(Payload(seed))
    progress = Progress()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as srv:
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("0.0.0.0", port))
        srv.listen(1)
        _say({"listening": True})
        srv.settimeout(max(0.0, deadline - time.monotonic()))
        try:
            conn, _ = srv.accept()
        except TimeoutError:
            _say(progress.result("no sender connected before the deadline", check.said()))
            return 1
        progress = Progress()  # the transfer starts now
        _say({"connected": True})
        with conn:
            while progress.bytes < nbytes:
                wait = _timeout(deadline, idle, progress)
                if wait <= 0:
                    _say(progress.result(_why(deadline, progress, "received"), check.said()))
                    return 1
                conn.settimeout(wait)
                try:
                    data = conn.recv(min(PIECE, nbytes - progress.bytes))
                except TimeoutError:
                    continue  # the limits are checked above
                except OSError as e:
                    _say(progress.result(f"recv at byte {progress.bytes}: {e}", check.said()))
                    return 1
                if not data:
                    break  # the sender closed: the host compares the counts (it may be asked)
                check.update(progress.bytes, data)
                progress.moved(len(data))
    _say(progress.result(said=check.said()))
    return 0


def _connect(addr: str, port: int, deadline: float) -> socket.socket:
    """Connect, retrying while the listener (another process) is not there yet."""
    while True:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            sock.connect((addr, port))
            return sock
        except (ConnectionRefusedError, TimeoutError, OSError):
            sock.close()
            if time.monotonic() + CONNECT_RETRY >= deadline:
                raise
            # A refused connect has no event to wait for: the listener is in another process.
            time.sleep(CONNECT_RETRY)


def send(
    addr: str,
    port: int,
    nbytes: int,
    seed: int,
    deadline: float,
    idle: float,
    tail: int,
    rate: float = 0.0,
) -> int:
    """rate: bytes a second of the guest's clock at most (0: as fast as it goes)."""
    progress = Progress()
    payload = Payload(seed)
    said: dict[str, object] = {"content": payload.fingerprint()}  # the host hashes (Payload)
    end = nbytes  # where the stream ends: SIGUSR1 moves it to `tail` bytes from now

    def told(signum: int, frame: object) -> None:
        nonlocal end
        end = min(end, progress.bytes + tail)

    signal.signal(signal.SIGUSR1, told)  # before anything: its default action kills
    try:
        sock = _connect(addr, port, deadline)
    except OSError as e:
        _say(progress.result(f"cannot connect to {addr}:{port}: {e}", said=said))
        return 1
    progress = Progress()
    with sock:
        while progress.bytes < end:
            chunk = payload.chunk(progress.bytes // CHUNK, min(CHUNK, nbytes - progress.bytes))
            view = memoryview(chunk)
            while view and progress.bytes < end:
                wait = _timeout(deadline, idle, progress)
                if wait <= 0:
                    _say(progress.result(_why(deadline, progress, "sent"), said=said))
                    return 1
                ahead = progress.bytes / rate - (time.monotonic() - progress.t0) if rate else 0
                if ahead > 0:
                    time.sleep(min(ahead, wait))  # the guest idles: on warp, cheaply
                    continue
                sock.settimeout(wait)
                try:
                    n = sock.send(view[: min(PIECE, end - progress.bytes)])
                except TimeoutError:
                    continue
                except OSError as e:
                    _say(progress.result(f"send at byte {progress.bytes}: {e}", said=said))
                    return 1
                view = view[n:]
                progress.moved(n)
        sock.shutdown(socket.SHUT_WR)
    result = progress.result(said=said)
    if end < nbytes:
        result["stopped"] = True
    _say(result)
    return 0


# --- the path: namespaces, addresses, carrier -----------------------------------------------


def _ip(*args: str) -> str:
    res = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=60)
    if res.returncode != 0:
        raise SystemExit(f"ip {' '.join(args)}: exit {res.returncode}: {res.stderr.strip()}")
    return res.stdout


def _links(netns: str) -> dict[str, str]:
    """Name -> `ip -o link` line of every link but lo in `netns` ("" for the initial one)."""
    where = ["-n", netns] if netns else []
    out: dict[str, str] = {}
    for line in _ip(*where, "-o", "link", "show").splitlines():
        name = line.split(":", 2)[1].strip().split("@", 1)[0]
        if name != "lo":
            out[name] = line
    return out


def _card_netdevs(bdf: str) -> list[str]:
    """The card's netdevs in this (the initial) namespace, port 1's first."""
    base = f"/sys/bus/pci/devices/{bdf}/net"
    try:
        names = os.listdir(base)
    except FileNotFoundError:
        return []

    def port(name: str) -> int:
        with open(f"{base}/{name}/dev_port") as f:
            return int(f.read().strip(), 0)

    return sorted(names, key=port)


def _fileno(proc: subprocess.Popen[bytes]) -> int:
    assert proc.stdout is not None
    return proc.stdout.fileno()


def _wait_up(where: list[tuple[str, str]], deadline: float) -> None:
    """Wait until each (netns, netdev) in `where` is operstate UP, on `ip monitor link`
    events (re-checking the state when none comes for a second: a monitor may have
    subscribed just after the change)."""
    monitors = {
        ns: subprocess.Popen(
            ["ip", *(["-n", ns] if ns else []), "-o", "monitor", "link"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        for ns in {ns for ns, _ in where}
    }
    try:
        waiting = list(where)
        while True:
            waiting = [
                (ns, dev) for ns, dev in waiting if " state UP " not in _links(ns).get(dev, "")
            ]
            if not waiting:
                return
            left = deadline - time.monotonic()
            if left <= 0:
                raise SystemExit(f"not operstate UP in time: {waiting}")
            fds = [_fileno(monitors[ns]) for ns in {ns for ns, _ in waiting}]
            ready, _, _ = select.select(fds, [], [], min(1.0, left))
            for fd in ready:
                os.read(fd, 65536)  # the state is read from `ip link` above
    finally:
        for mon in monitors.values():
            mon.kill()
            mon.wait()


def path(bdf: str, netns: list[str], addrs: list[str], deadline: float) -> int:
    """bdf "": a veth pair (made in the first namespace, its peer in the second)."""
    card = _card_netdevs(bdf) if bdf else []
    if not bdf:
        for ns in netns:
            if not os.path.exists(f"/run/netns/{ns}"):
                _ip("netns", "add", ns)
        if not _links(netns[0]):
            _ip("-n", netns[0], "link", "add", "veth-a", "type", "veth", "peer", "name", "veth-b")
            _ip("-n", netns[0], "link", "set", "veth-b", "netns", netns[1])
    where: dict[str, str] = {}
    for i, (ns, addr) in enumerate(zip(netns, addrs, strict=True)):
        if not os.path.exists(f"/run/netns/{ns}"):
            _ip("netns", "add", ns)
        inside = list(_links(ns))
        if not inside:
            if i >= len(card):
                raise SystemExit(f"no netdev of {bdf} for namespace {ns} (found {card})")
            _ip("link", "set", card[i], "netns", ns)
            inside = [card[i]]
        if len(inside) != 1:
            raise SystemExit(f"namespace {ns} holds {inside}, not one netdev of the card")
        dev = where[ns] = inside[0]
        _ip("-n", ns, "addr", "replace", addr, "dev", dev)
        _ip("-n", ns, "link", "set", dev, "up")
    _wait_up(list(where.items()), deadline)
    _say({"path": where})
    return 0


def unpath(netns: list[str], deadline: float, veth: bool) -> int:
    back: list[str] = []
    for ns in netns:
        if not os.path.exists(f"/run/netns/{ns}"):
            continue
        for dev in [] if veth else _links(ns):
            _ip("-n", ns, "link", "set", dev, "netns", "1")
            _ip("link", "set", dev, "up")
            back.append(dev)
        _ip("netns", "del", ns)
    _wait_up([("", dev) for dev in back], deadline)
    _say({"unpath": sorted(back)})
    return 0


# --- serve: one process for all of it ------------------------------------------------------

CLONE_NEWNET = 0x40000000


def _enter_netns(name: str) -> None:
    """What `ip netns exec` does that a stream needs: this process's sockets in `name`."""
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if hasattr(os, "setns"):  # Python 3.12
            os.setns(fd, CLONE_NEWNET)
            return
        import ctypes  # only here: the guest's bookworm has Python 3.11

        if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns {name}: {os.strerror(err)}")
    finally:
        os.close(fd)


def _fork_stream(op: str, req: dict[str, Any]) -> int:
    """Fork a child that runs receive() or send() in req["netns"] (None: this namespace)."""
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        os.close(0)  # the requests are the server's
        netns = req.pop("netns", None)
        if netns is not None:
            _enter_netns(str(netns))
        deadline = time.monotonic() + float(req.pop("deadline"))
        run = receive if op == "recv" else send
        code = run(deadline=deadline, **req)
    except BaseException as e:  # the child must end here, never in the server's loop
        _say({"error": f"{op}: {type(e).__name__}: {e}"})
    finally:
        os._exit(code)


def serve() -> int:
    global _ID
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # until send() takes it: early is not fatal
    streams: dict[object, int] = {}  # request id -> the child running it
    for line in sys.stdin:
        req = json.loads(line)
        _ID, op = req.pop("id"), req.pop("op")
        for rid, pid in list(streams.items()):  # reaped only here: a pid is never reused
            if os.waitpid(pid, os.WNOHANG)[0]:  # while end_soon may still name it
                del streams[rid]
        try:
            if op in ("recv", "send"):  # the child's own lines are its only answer
                streams[_ID] = _fork_stream(op, req)
            elif op == "end_soon":
                sender = streams.get(req["stream"])
                if sender is not None:
                    os.kill(sender, signal.SIGUSR1)
                _say({"signalled": sender is not None})
            elif op == "stop":
                _stop(streams)
                _say({"stopped": True})
            elif op == "time":
                _say({"time": time.time()})
            elif op == "path":
                deadline = time.monotonic() + float(req["deadline"])
                path(req["bdf"], req["netns"], req["addrs"], deadline)
            elif op == "unpath":
                deadline = time.monotonic() + float(req["deadline"])
                unpath(req["netns"], deadline, bool(req["veth"]))
            else:
                _say({"error": f"unknown op {op!r}"})
        except SystemExit as e:  # path()'s and unpath()'s way of saying what failed
            _say({"error": str(e.code)})
        except (OSError, KeyError, TypeError, ValueError) as e:
            _say({"error": f"{op}: {type(e).__name__}: {e}"})
        _ID = None
    _stop(streams)
    return 0


def _stop(streams: dict[object, int]) -> None:
    for pid in streams.values():  # not reaped yet, so still theirs (maybe as zombies)
        os.kill(pid, signal.SIGTERM)
        os.waitpid(pid, 0)
    streams.clear()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="traffic_guest.py")
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name in ("recv", "send"):
        p = sub.add_parser(name)
        p.add_argument("--port", type=int, required=True)
        p.add_argument("--bytes", type=int, required=True)
        p.add_argument("--deadline", type=float, required=True, help="seconds for the whole run")
        p.add_argument("--idle", type=float, default=300.0, help="seconds without progress")
        p.add_argument("--seed", type=int, default=0, help="the content's (both ends: the same)")
        if name == "send":
            p.add_argument("--to", required=True)
            p.add_argument("--tail", type=int, default=0, help="bytes sent after SIGUSR1")
            p.add_argument("--rate", type=float, default=0.0, help="bytes/s at most (0: no cap)")
    p = sub.add_parser("path")
    ends = p.add_mutually_exclusive_group(required=True)
    ends.add_argument("--bdf", help="the card's PCI address: its ports are the ends")
    ends.add_argument("--veth", action="store_true", help="a veth pair is")
    p.add_argument("--netns", required=True, help="comma-separated, port 1's first")
    p.add_argument("--addrs", required=True, help="comma-separated, with prefix length")
    p.add_argument("--deadline", type=float, default=60.0)
    p = sub.add_parser("unpath")
    p.add_argument("--netns", required=True)
    p.add_argument("--veth", action="store_true")
    p.add_argument("--deadline", type=float, default=60.0)
    sub.add_parser("serve")
    args = parser.parse_args(argv)
    if args.cmd == "serve":
        return serve()
    deadline = time.monotonic() + args.deadline
    if args.cmd == "path":
        return path(args.bdf or "", args.netns.split(","), args.addrs.split(","), deadline)
    if args.cmd == "unpath":
        return unpath(args.netns.split(","), deadline, args.veth)
    if args.cmd == "recv":
        return receive(args.port, args.bytes, deadline, args.idle, args.seed)
    return send(
        args.to, args.port, args.bytes, args.seed, deadline, args.idle, args.tail, args.rate
    )


if __name__ == "__main__":
    sys.exit(main())
