"""rig.traffic without a VM: busybox ping's summary, the guest program's results, and the
guest program itself running both ends over the host's loopback."""

from __future__ import annotations

import hashlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from guest.programs.traffic_guest import CHUNK, POOL, Check, Payload
from rig.commands.options import byte_count as _size
from rig.errors import KernelFailure, MachineError, RigError
from rig.traffic import (
    SCRIPT,
    End,
    Gap,
    TcpResult,
    _Server,
    parse_ping,
    retrans_segs,
    tcp_ext,
)

BUSYBOX = """PING 10.99.0.2 (10.99.0.2): 56 data bytes

--- 10.99.0.2 ping statistics ---
100 packets transmitted, 97 packets received, 3% packet loss
round-trip min/avg/max = 1.805/3.337/12.939 ms
"""


def test_the_payload_repeats_no_chunk_and_depends_on_its_seed() -> None:
    """A misplaced or repeated MiB must change the stream's hash: no two chunks alike, even
    those that share a random MiB of the pool."""
    payload = Payload(7)
    chunks = [payload.chunk(i) for i in range(3 * POOL)]
    assert all(len(c) == CHUNK for c in chunks)
    assert len(set(chunks)) == len(chunks)
    assert chunks == [Payload(7).chunk(i) for i in range(3 * POOL)]  # the same on every run
    assert Payload(8).chunk(0) != chunks[0]
    assert payload.chunk(POOL + 1, 100) == chunks[POOL + 1][:100]


def test_the_digests_are_computed_from_the_seed_and_checked_against_the_content() -> None:
    """The guest hashes nothing: the host computes what an end handled from the seed and the
    byte count, once the fingerprint it printed says its Python drew the same bytes."""
    payload, nbytes = Payload(7), 2 * CHUNK + 5
    whole = b"".join(payload.chunk(i) for i in range(3))[:nbytes]
    assert payload.sha256(nbytes) == hashlib.sha256(whole).hexdigest()
    assert payload.sha256(0) == hashlib.sha256(b"").hexdigest()
    said = {"bytes": nbytes, "elapsed": 1.0, "gap": {"s": 0, "at_byte": 0, "from": 0, "to": 0}}
    sent = End.parse(json.dumps({**said, "content": payload.fingerprint()}), "sender", payload)
    assert sent.sha256 == hashlib.sha256(whole).hexdigest() and sent.bytes == nbytes
    other = json.dumps({**said, "content": Payload(8).fingerprint()})
    with pytest.raises(RigError, match="sender's content is not the host's for the same seed"):
        End.parse(other, "sender", payload)
    bad = json.dumps({**said, "content": payload.fingerprint(), "mismatch_at": 1234})
    received = End.parse(bad, "receiver", payload)
    assert (received.mismatch_at, received.sha256) == (1234, "")
    problem = TcpResult(nbytes, sent, received).problem()
    assert problem == "the bytes received differ from those sent from byte 1234"


def test_the_receiver_names_the_first_byte_unlike_the_seeds() -> None:
    payload = Payload(7)
    data = b"".join(payload.chunk(i) for i in range(3))
    check = Check(payload)
    for offset in range(0, len(data), 50_000):  # pieces across the chunks' edges
        check.update(offset, data[offset : offset + 50_000])
    assert check.said() == {"content": payload.fingerprint()}
    wrong = bytearray(data)
    wrong[CHUNK + 17] ^= 1
    check = Check(payload)
    for offset in range(0, len(wrong), 50_000):
        check.update(offset, bytes(wrong[offset : offset + 50_000]))
    assert check.said() == {"content": payload.fingerprint(), "mismatch_at": CHUNK + 17}


def test_busybox_ping_summary() -> None:
    ping = parse_ping(BUSYBOX)
    assert (ping.transmitted, ping.received, ping.loss_pct) == (100, 97, 3.0)
    assert ping.rtt_ms == {"min": 1.805, "avg": 3.337, "max": 12.939}
    assert "97 received" in str(ping)


def test_ping_with_no_reply_has_no_rtt_and_garbage_is_one_clear_error() -> None:
    ping = parse_ping("3 packets transmitted, 0 packets received, 100% packet loss\n")
    assert ping.rtt_ms == {} and ping.received == 0
    with pytest.raises(RigError, match="no ping summary"):
        parse_ping("ping: sendto: Network unreachable")


def end(n: int, digest: str = "ab", error: str = "", stopped: bool = False) -> End:
    return End(n, digest, 1.0, Gap(0.5, 10, 100.0, 100.5), error, stopped)


def test_a_transfer_fails_saying_where() -> None:
    assert TcpResult(20, end(20), end(20)).ok
    assert "SHA-256 differs" in TcpResult(20, end(20), end(20, "cd")).problem()
    assert "10 received" in TcpResult(20, end(20), end(10)).problem()
    stalled = TcpResult(20, end(20), end(10, error="no progress for 240.0 s at byte 10"))
    with pytest.raises(KernelFailure, match=r"receiver stopped: no progress .* at byte 10"):
        stalled.check()


def test_a_sender_asked_to_end_early_sets_the_length() -> None:
    assert TcpResult(20, end(12, stopped=True), end(12)).ok
    assert "20 bytes asked, 12 sent" in TcpResult(20, end(12), end(12)).problem()
    short = TcpResult(20, end(12, stopped=True), end(10)).problem()
    assert short == "20 bytes asked (then fewer), 12 sent, 10 received"
    assert "SHA-256 differs" in TcpResult(20, end(12, stopped=True), end(12, "cd")).problem()


def test_gap_around_a_moment() -> None:
    gap = Gap(0.5, 10, 100.0, 100.5)
    assert gap.around(100.2) and not gap.around(101.0)


def test_an_unreadable_result_is_a_rig_error() -> None:
    with pytest.raises(RigError, match="not its result"):
        End.parse("Traceback (most recent call last):", "sender", Payload(0))


def test_sizes() -> None:
    assert (_size("64M"), _size("8k"), _size("100")) == (64 << 20, 8 << 10, 100)
    with pytest.raises(Exception, match="not a byte count"):
        _size("lots")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def local_transfer(nbytes: int, seed: int, *send_args: str) -> TcpResult:
    """The guest program's two ends on this host's loopback, the receiver first."""
    common = ["--port", str(_free_port()), "--bytes", str(nbytes), "--deadline", "60"]
    common += ["--idle", "30", "--seed", str(seed)]
    recv = subprocess.Popen(
        [sys.executable, str(SCRIPT), "recv", *common], stdout=subprocess.PIPE, text=True
    )
    try:
        assert recv.stdout is not None
        assert json.loads(recv.stdout.readline()) == {"listening": True}
        sent = subprocess.run(
            [sys.executable, str(SCRIPT), "send", "--to", "127.0.0.1", *send_args, *common],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert json.loads(recv.stdout.readline()) == {"connected": True}
        received = End.parse(recv.stdout.readline(), "receiver", Payload(seed))
        assert recv.wait(timeout=60) == 0
    finally:
        recv.kill()
    assert sent.returncode == 0, sent.stderr
    return TcpResult(nbytes, End.parse(sent.stdout, "sender", Payload(seed)), received)


def test_the_guest_program_checks_what_crossed_at_both_ends() -> None:
    result = local_transfer(3 * (1 << 20) + 12345, 7)
    assert result.ok, result.problem()


def test_the_guest_program_ends_a_stream_early_when_told() -> None:
    """The sender starts first (it retries until the receiver listens); SIGUSR1 makes it
    send its tail and close, and both ends agree on what crossed."""
    port, nbytes, tail = _free_port(), 64 << 30, 1 << 20
    common = ["--port", str(port), "--bytes", str(nbytes), "--deadline", "60", "--idle", "30"]
    script = [sys.executable, str(SCRIPT)]
    send = subprocess.Popen(
        [*script, "send", "--to", "127.0.0.1", "--tail", str(tail), *common],
        stdout=subprocess.PIPE,
        text=True,
    )
    recv = subprocess.Popen([*script, "recv", *common], stdout=subprocess.PIPE, text=True)
    try:
        assert recv.stdout is not None and send.stdout is not None
        assert json.loads(recv.stdout.readline()) == {"listening": True}
        assert json.loads(recv.stdout.readline()) == {"connected": True}
        send.send_signal(signal.SIGUSR1)
        sent = End.parse(send.stdout.readline(), "sender", Payload(0))
        received = End.parse(recv.stdout.readline(), "receiver", Payload(0))
        assert (send.wait(timeout=60), recv.wait(timeout=60)) == (0, 0)
    finally:
        send.kill()
        recv.kill()
    assert sent.stopped and 0 < sent.bytes < nbytes
    result = TcpResult(nbytes, sent, received)
    assert result.ok, result.problem()


def test_the_guest_program_gives_up_on_its_deadline_and_says_so() -> None:
    args = ["recv", "--port", str(_free_port()), "--bytes", "10", "--deadline", "0.5"]
    res = subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert res.returncode == 1
    last = End.parse(res.stdout.splitlines()[-1], "receiver", Payload(0))
    assert "no sender connected" in last.error


class Served:
    """`traffic_guest.py serve` as a local process, with the few calls of an SSH Background
    that rig.traffic._Server makes."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(SCRIPT), "serve"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self._buf = b""

    def readline(self, timeout: float) -> str | None:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            if not select.select([self.proc.stdout], [], [], max(0.0, deadline - time.monotonic()))[
                0
            ]:
                raise MachineError(f"no output within {timeout} s")
            data = os.read(self.proc.stdout.fileno(), 65536)
            if not data:
                return None
            self._buf += data
        line, self._buf = self._buf.split(b"\n", 1)
        return line.decode()

    def write(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def stderr(self) -> str:
        return ""

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()


@pytest.fixture
def served() -> Iterator[tuple[_Server, Served]]:
    local = Served()
    try:
        yield _Server(local), local  # type: ignore[arg-type]
    finally:
        local.proc.kill()
        local.proc.wait()


def test_one_guest_process_serves_a_stream_told_to_end_early(
    served: tuple[_Server, Served],
) -> None:
    """The ends are forked children whose lines interleave with the server's answers; each
    reaches its own request, and end_soon is the sender's SIGUSR1."""
    server, _ = served
    port, nbytes, tail = _free_port(), 64 << 30, 1 << 20
    common = {"port": port, "nbytes": nbytes, "deadline": 60, "idle": 30}
    recv = server.send("recv", seed=3, **common)
    send = server.send("send", addr="127.0.0.1", seed=3, tail=tail, **common)
    assert server.reply(recv, 30, "listening") == {"listening": True}
    assert server.reply(recv, 30, "connected") == {"connected": True}
    assert abs(server.call("time", 30)["time"] - time.time()) < 5
    assert server.call("end_soon", 30, stream=send) == {"signalled": True}
    sent = End.parse(json.dumps(server.reply(send, 60, "sent")), "sender", Payload(3))
    received = End.parse(json.dumps(server.reply(recv, 60, "received")), "receiver", Payload(3))
    assert sent.stopped and 0 < sent.bytes < nbytes
    assert TcpResult(nbytes, sent, received).ok


def test_the_server_says_what_it_cannot_do_and_stops_its_streams_at_the_end(
    served: tuple[_Server, Served],
) -> None:
    server, local = served
    with pytest.raises(RigError, match="unknown op 'fly'"):
        server.call("fly", 30)
    lost = server.send("recv", netns="no-such-ns", port=0, nbytes=1, deadline=5, idle=5)
    assert "no-such-ns" in server.reply(lost, 30, "its error")["error"]
    port = _free_port()
    recv = server.send("recv", port=port, nbytes=1 << 30, deadline=600, idle=600)
    assert server.reply(recv, 30, "listening") == {"listening": True}
    local.close()  # end of requests: the receiver still waits for a sender
    assert local.proc.wait(timeout=30) == 0
    with pytest.raises(ConnectionRefusedError):  # it was stopped, not left to its deadline
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


def test_retransmitted_segments_from_proc_net_snmp() -> None:
    snmp = (
        "Ip: Forwarding DefaultTTL\nIp: 1 64\n"
        "Tcp: RtoAlgorithm RtoMin OutSegs RetransSegs InErrs\nTcp: 1 200 10622535 1101 0\n"
    )
    assert retrans_segs(snmp) == 1101
    with pytest.raises(RigError, match="no TCP RetransSegs"):
        retrans_segs("Tcp: RtoAlgorithm RtoMin\n")


def test_tcp_ext_counters_from_proc_net_netstat() -> None:
    # The Tcp lines of /proc/net/snmp come first in the rig's command: they are not TcpExt.
    text = (
        " RtoAlgorithm RetransSegs\nTcp: 1 143\n"
        "TcpExt: SyncookiesSent TCPTimeouts TCPLossProbes TCPSackRecovery\n"
        "TcpExt: 0 1 2 0\n"
    )
    assert tcp_ext(text) == {"TCPTimeouts": 1, "TCPLossProbes": 2, "TCPSackRecovery": 0}
    assert retrans_segs("Tcp:" + text) == 143
    with pytest.raises(RigError, match="no TcpExt counters"):
        tcp_ext("TcpExt: TCPTimeouts\n")


def test_a_paced_sender_keeps_to_its_rate() -> None:
    """--rate caps bytes a second: 2 MiB at 8 MiB/s take at least a quarter second (a few
    milliseconds unpaced on loopback), and arrive as sent."""
    nbytes, rate = 2 << 20, 8 << 20
    result = local_transfer(nbytes, 5, "--rate", str(rate))
    assert result.ok, result.problem()
    assert result.sent.elapsed >= 0.9 * (nbytes - 64 * 1024) / rate, result.sent.elapsed
