"""Traffic across the card: port 1's netdev in namespace rig-a, port 2's in rig-b, the model's
cable between them (rig/traffic.py). Frames cross intact and are counted on both ends; a fault
taken while a TCP transfer runs still gives snapshots equal to the device's truth, and once
the path is restored the transfer completes with the SHA-256 it started with (TCP retransmits
across the reset); five such faults in a row leave no warning and leak nothing.

Run time: one boot, a ping, a 64 MiB transfer (about 15-30 s under TCG), two catas faults of
the single kind and five in a row, each under a stream that ends 2 MiB after the recovery
(~13 s a cycle on the warped clock), and the 60 s command timeout (slow): 140 s in one worker
on the warped clock from a saved VM, on an idle 2-core machine.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from rig.mlx4 import REGIONS
from rig.pytest_plugin import RigFactory, rig_channel
from rig.rig import Rig
from rig.traffic import TRAFFIC_MOST, FaultUnderTraffic, Traffic, fault_under_traffic
from rig.vm import clock as vmclock
from tests.e2e.support import (
    assert_no_kernel_trouble,
    assert_same_bytes,
    health_buffer,
    leak_counters,
)

pytestmark = pytest.mark.e2e

BIG = 64 << 20
# Per catas under traffic, at most (rig.traffic.TRAFFIC_MOST): paced (FAULT_RATE), the stream
# runs when the driver's 5 s catas poll fires; once the path is back the sender ends 2 MiB
# later (rig.traffic.Traffic.end_soon).
PER_CYCLE = TRAFFIC_MOST
# A hung command stops no data (check_fault_under_traffic): its stream need only be running
# when the next command hangs (mlx4_en's statistics ask every 250 ms of guest time), and it
# ends long before the driver's 60 s wait whatever its size; a bigger one only costs CPU.
TIMEOUT_STREAM = 8 << 20
# Each full-size frame carries the payload plus Ethernet (14), IPv4 (20) and TCP with
# timestamps (32) headers: what mlx4_en counts in tx_bytes and rx_bytes (no FCS).
HEADERS = 14 + 20 + 32
MSS = 1500 - 20 - 32
# TCP's resends in a 64 MiB stream on a lossless cable: its tail loss probe, once or twice
# (a dropping card would need one per frame lost, and show in rx_fifo_errors below). The
# cable is lossless because mlx4_en asks for pause: a port out of receive WQEs holds its
# peer's frames back (cx3/datapath.py).
MAX_RETRANSMITS = 4
# Frames outside the stream that may cross during the counting window (IPv6 router and
# neighbour solicitations, MLD reports of the namespaces' link-local addresses).
STRAY_BYTES = 2048


@pytest.fixture(scope="module")
def rig(rig_factory: RigFactory) -> Iterator[Rig]:
    # Its guest is busy (a TCP stream) while it waits for the driver's 5 s catas poll.
    booted = rig_factory(name="traffic", warp_shift=vmclock.BUSY_SHIFT)
    yield booted
    rig_factory.stop(booted)


@pytest.fixture(scope="module")
def path(rig: Rig) -> Iterator[Traffic]:
    """One traffic path for the module's rig: moving the netdevs into their namespaces and
    back restarts both ports (~4 s a test under TCG)."""
    with Traffic(rig) as t:
        yield t


@pytest.fixture
def traffic(path: Traffic) -> Iterator[Traffic]:
    """The module's path as each test finds it: back in place (idempotent; a test that
    failed mid-fault may have left it torn), no stream running after the test."""
    path.restore()
    yield path
    path.stop()


@pytest.fixture(autouse=True)
def log_mark(rig: Rig) -> int:
    return len(rig.dmesg().splitlines())


def test_64_mib_arrive_intact_and_both_ends_count_them(
    rig: Rig, traffic: Traffic, log_mark: int
) -> None:
    result = traffic.tcp(BIG)
    result.check()
    sender, receiver = result.netdevs
    tx_bytes, tx_frames = result.delta(sender, "tx_bytes"), result.delta(sender, "tx_packets")
    # The data direction: every payload byte once in frames of at most MSS bytes, each with
    # its headers, plus what TCP sent again; what one end sent the other got. A lossless cable
    # leaves TCP only its tail loss probe to resend (TcpResult.retransmits: ~1 a stream).
    assert result.retransmits <= MAX_RETRANSMITS, (
        f"{result.retransmits} segments sent again; the sender's TcpExt grew by {result.tcp_ext}"
        f"; {tx_frames} frames sent, {result.delta(receiver, 'rx_packets')} received, "
        f"rx_dropped +{result.delta(receiver, 'rx_dropped')}, "
        f"rx_fifo_errors +{result.delta(receiver, 'rx_fifo_errors')}"
    )
    assert tx_frames >= BIG // MSS, (tx_frames, BIG // MSS)
    most = BIG + tx_frames * HEADERS + result.retransmits * MSS + STRAY_BYTES
    assert BIG <= tx_bytes <= most, (tx_bytes, tx_frames, result.retransmits)
    assert abs(result.delta(receiver, "rx_bytes") - tx_bytes) <= STRAY_BYTES
    assert abs(result.delta(receiver, "rx_packets") - tx_frames) <= STRAY_BYTES // 64
    # The ACK direction: header-only frames, fewer than the data frames (delayed ACKs, and
    # GRO on the receiver acknowledges several frames at once); again both ends agree.
    acks = result.delta(receiver, "tx_packets")
    assert 0 < acks < tx_frames, (acks, tx_frames)
    assert abs(result.delta(sender, "rx_bytes") - result.delta(receiver, "tx_bytes")) <= (
        STRAY_BYTES
    )
    for dev in result.netdevs:
        for counter in ("rx_errors", "rx_fifo_errors", "tx_errors", "tx_dropped"):
            assert result.delta(dev, counter) == 0, (dev, counter, result.counters_after[dev])
        # mlx4_en drops (and counts in rx_dropped) the multicast it did not ask for — the
        # peer's IPv6 solicitations and MLD reports — never a frame of the stream: its
        # frames are all counted above.
        assert result.delta(dev, "rx_dropped") <= STRAY_BYTES // 64, result.counters_after[dev]
    assert_no_kernel_trouble(rig, failed_commands=True, since=log_mark)


def check_fault_under_traffic(rig: Rig, run: FaultUnderTraffic, stops_data: bool) -> None:
    """Snapshots equal to the device's truth, and the transfer whole across the reset.

    stops_data: the fault stops the stream until the recovery (a catas: the driver resets
    the port). A hung command need not: the data path needs no command, so the stream (which
    fault_under_traffic starts right before the injection) may well end within the driver's
    60 s wait — a periodic DUMP_ETH_STATS is often the command that hangs.
    """
    snap = run.cycle.snapshot_id()
    # Over netlink: iproute2's JSON of a 1 MiB snapshot takes the guest ~1.4 s of CPU under
    # TCG, and which reader sees the snapshot is not what these tests are about (test_snapshots
    # and test_regions hold the CLI to netlink).
    netlink = rig_channel(rig, "netlink")
    for region in REGIONS:
        got = netlink.dump(rig.region(region), snap)
        assert_same_bytes(got, run.cycle.expected(region), region)
    run.result.check()
    if stops_data:
        assert run.gap.spans_recovery, f"the fault did not interrupt the stream: {run.gap}"


def check_rings_rebuilt(events: list[dict[str, Any]]) -> None:
    """The device's side of a reset under traffic: the reset tore down the rings the stream
    used, the driver created CQs and QPs again after it, and rang their doorbells."""
    resets = [e for e in events if e["kind"] == "reset"]
    assert resets, "no reset"
    first, last = resets[0], resets[-1]  # the recovery may reset more than once
    assert first["cqs"] and first["qps"], f"the reset found no rings to tear down: {resets}"
    after = [e for e in events if e["index"] > last["index"]]
    created = {e["name"] for e in after if e["kind"] == "cmd" and e.get("status") == 0}
    assert {"SW2HW_CQ", "RST2INIT_QP", "INIT2RTR_QP", "RTR2RTS_QP"} <= created, created
    sends = [e for e in after if e["kind"] == "send_doorbell"]
    assert sends and sends[0]["n"] == 1, "no send doorbell after the reset"


def test_catas_during_a_tcp_transfer(rig: Rig, traffic: Traffic, log_mark: int) -> None:
    rig.device.set_health(health_buffer(0xA1))
    rig.mlx4.enable_snapshots()
    first_event = rig.device.events(1 << 62).next
    # PER_CYCLE, as the five cycles: the stream ends 2 MiB after the recovery whatever its
    # bound, which must only outlast the 5 s poll.
    run = fault_under_traffic(rig, traffic, PER_CYCLE, "catas")
    check_fault_under_traffic(rig, run, stops_data=True)
    check_rings_rebuilt(rig.device.events(first_event).events)
    assert_no_kernel_trouble(rig, failed_commands=True, since=log_mark)


@pytest.mark.slow
def test_command_timeout_during_a_tcp_transfer(rig: Rig, traffic: Traffic, log_mark: int) -> None:
    rig.device.set_health(health_buffer(0xA2))
    rig.mlx4.enable_snapshots()
    run = fault_under_traffic(rig, traffic, TIMEOUT_STREAM, "cmd-timeout")
    check_fault_under_traffic(rig, run, stops_data=False)
    assert_no_kernel_trouble(rig, failed_commands=False, since=log_mark)


def test_five_catas_under_traffic_leave_no_warning_and_leak_nothing(
    rig: Rig, traffic: Traffic, log_mark: int
) -> None:
    rig.mlx4.enable_snapshots()
    first: dict[str, int] = {}
    for n in range(5):
        rig.device.set_health(health_buffer(0xB0 + n))
        run = fault_under_traffic(rig, traffic, PER_CYCLE, "catas")
        run.result.check()
        assert run.gap.spans_recovery, f"cycle {n}: the fault did not interrupt the stream"
        for region, snapshot in run.cycle.ids.items():  # the regions keep 8 snapshots at most
            rig.netlink.delete(rig.region(region), snapshot)
        if n == 0:  # the first cycle allocates what later ones reuse
            first = leak_counters(rig)
    last = leak_counters(rig)  # both taken with the netdevs in their namespaces
    keys = ("netdevs", "vmalloc", "irqs")
    assert {k: last[k] for k in keys} == {k: first[k] for k in keys}
    # Slab churns (RCU, caches, socket buffers): four cycles may not keep more than 2%.
    assert last["slab_objects"] <= first["slab_objects"] * 1.02, (first, last)
    assert_no_kernel_trouble(rig, failed_commands=True, since=log_mark)


def test_ping_100_without_loss(traffic: Traffic) -> None:
    ping = traffic.ping(100)
    assert (ping.transmitted, ping.received) == (100, 100), ping
