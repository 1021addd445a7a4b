"""mlx4_en on the emulated ConnectX-3, as a production machine runs it: mlx4_core and mlx4_en
loaded, the netdevs (one per port of the dual-port card) up with carrier — and every fault
taken there. After each fault both snapshots equal the device truth, the netdevs come back
with the same names and MACs, up with carrier, and the kernel log holds no warning and no
failed firmware command.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Iterator

import pytest

from cx3 import caps
from rig import builtin
from rig.devlink.channels import RegionChannel
from rig.errors import MachineError
from rig.mlx4 import REGIONS, FaultCycle, Netdev
from rig.pytest_plugin import RigFactory, rig_channel
from rig.rig import Rig
from rig.vm.ssh import Background
from tests.e2e.support import (
    assert_no_kernel_trouble,
    assert_snapshot_holds,
    health_buffer,
    leak_counters,
)

pytestmark = pytest.mark.e2e

MACS = [":".join(f"{b:02x}" for b in (caps.MAC + port).to_bytes(6, "big")) for port in (0, 1)]
FAULT_CYCLES = 5  # in a row, for leaks
LINKWATCH_PACE = 1.0  # s: linkwatch_nextevent = jiffies + HZ


@pytest.fixture(scope="module")
def rig(rig_factory: RigFactory) -> Iterator[Rig]:
    booted = rig_factory(name="en")  # the defaults: mlx4_en loaded, netdevs up
    yield booted
    rig_factory.stop(booted)


def up(rig: Rig) -> list[Netdev]:
    """The card's netdevs, one per port, which must be up with carrier and the ports' MACs."""
    netdevs = rig.mlx4.netdevs()
    assert [(n.mac, n.operstate, n.carrier) for n in netdevs] == [
        (mac, "up", True) for mac in MACS
    ], netdevs
    return netdevs


@pytest.fixture(autouse=True)
def log_mark(rig: Rig) -> int:
    """The kernel log's length when the test began: each test answers for its own lines."""
    return len(rig.dmesg().splitlines())


def check_fault(rig: Rig, cycle: FaultCycle, devlink: RegionChannel, since: int) -> None:
    """What every fault taken with the interface up must leave behind."""
    snap = cycle.snapshot_id()
    for region in REGIONS:
        assert_snapshot_holds(rig, devlink, snap, region, cycle.expected(region))
    assert cycle.netdevs_before == cycle.netdevs_after == up(rig)
    assert_no_kernel_trouble(rig, failed_commands=cycle.kind != "closing-cmd", since=since)


def test_netdev_is_up_with_the_devices_mac_and_mlx4_en_counters(rig: Rig, log_mark: int) -> None:
    for n, mac in zip(up(rig), MACS, strict=True):
        assert f"link/ether {mac}" in rig.sh(f"ip -d link show {n.name}").stdout
        info = rig.sh(f"ethtool -i {n.name}").stdout
        assert re.search(r"^driver: mlx4_en$", info, re.M), info
        assert re.search(r"^bus-info: " + re.escape(rig.dev_handle.split("/", 1)[1]), info, re.M)
        stats = dict(
            line.strip().split(": ", 1)
            for line in rig.sh(f"ethtool -S {n.name}").stdout.splitlines()[1:]
            if ": " in line
        )
        for counter in ("rx_packets", "tx_packets", "rx_bytes", "tx_bytes", "rx_dropped"):
            assert stats[counter].isdigit(), (counter, stats.get(counter))
        assert "fe80::" in rig.sh(f"ip -6 addr show dev {n.name}").stdout, "no link-local"
    assert_no_kernel_trouble(rig, failed_commands=True, since=log_mark)


def guest_time(text: str) -> datetime.datetime:
    """A time as `date +%Y-%m-%dT%H:%M:%S.%N` or `ip -ts` print it in the guest."""
    found = re.search(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)\.(\d{6})", text)
    assert found, f"no timestamp in {text!r}"
    return datetime.datetime.fromisoformat(f"{found[1]}.{found[2]}")


def subscribed_link_monitor(rig: Rig) -> Background:
    """`ip -o monitor link` in the guest, once it is listening: it has seen a change of lo."""
    monitor = rig.spawn("ip -ts -o monitor link")  # each line stamped with the guest's clock
    for mtu in (65535, 65536) * 5:
        rig.sh(f"ip link set lo mtu {mtu}")
        try:
            while " lo:" not in (monitor.readline(timeout=1.0) or " lo:"):
                pass
            return monitor
        except MachineError:  # not listening yet when lo changed: change it again
            continue
    monitor.close()
    raise AssertionError("`ip monitor link` never reported a change of lo")


def test_cable_pull_and_plug_flip_carrier_within_a_second(rig: Rig) -> None:
    names = [n.name for n in up(rig)]  # the cable joins port 1 to port 2: both ends follow
    monitor = subscribed_link_monitor(rig)
    try:
        for plugged, word in ((False, "NO-CARRIER"), (True, "LOWER_UP")):
            # Timed on the guest's clock, from before the knob turns to the monitor's stamp:
            # SSH's delay in bringing the line to the host is not the guest's.
            t0 = guest_time(rig.sh("date +%Y-%m-%dT%H:%M:%S.%N").stdout)
            rig.device.fault("link", up=plugged)
            waiting, delays = set(names), []
            while waiting:  # every line is an RTM_NEWLINK; wait for the new state of both
                line = monitor.readline(timeout=5.0)
                assert line is not None, f"no link event after the cable was {word}"
                done = {name for name in waiting if f" {name}:" in line and word in line}
                if done:
                    waiting -= done
                    delays.append((guest_time(line) - t0).total_seconds())
            assert delays[0] < 1.0, f"carrier {word} took {delays[0]:.2f} s in the guest"
            # The second port's change waits for the kernel's link watch, which runs at most
            # once a second for a non-urgent event (net/core/link_watch.c): the driver saw
            # both within milliseconds (its "Link Down/Up" lines), the kernel paces the rest.
            assert delays[-1] < 1.0 + LINKWATCH_PACE, f"carrier {word}: {delays} s"
            for name in names:
                carrier = rig.sh(f"cat /sys/class/net/{name}/carrier").stdout.strip()
                assert carrier == ("1" if plugged else "0"), name
    finally:
        monitor.close()
        rig.device.fault("link", up=True)
    up(rig)


def test_mlx4_en_alone_unloads_and_loads_again(rig: Rig, log_mark: int) -> None:
    before = up(rig)
    rig.sh("rmmod mlx4_en")
    assert rig.mlx4.netdevs() == []
    assert rig.dev_handle in rig.sh("devlink dev show").stdout, "mlx4_core went too"
    since = len(rig.console.text)
    rig.sh("modprobe mlx4_en")
    assert rig.mlx4.wait_netdevs_up(since) == before
    assert_no_kernel_trouble(rig, failed_commands=True, since=log_mark)


def test_devlink_reload_with_the_interface_up(rig: Rig, log_mark: int) -> None:
    before = up(rig)
    rig.mlx4.reload()  # checks that the netdev came back up with its name and MAC
    assert up(rig) == before
    assert_no_kernel_trouble(rig, failed_commands=True, since=log_mark)


def test_catas_with_the_interface_up(rig: Rig, devlink: RegionChannel, log_mark: int) -> None:
    rig.device.load_crspace(builtin.crspace_image())
    rig.device.set_health(health_buffer(0xE1))
    rig.mlx4.enable_snapshots()
    check_fault(rig, rig.mlx4.fault("catas"), devlink, log_mark)


def test_closing_command_fault_with_the_interface_up(
    rig: Rig, devlink: RegionChannel, log_mark: int
) -> None:
    rig.device.set_health(health_buffer(0xE2))
    rig.mlx4.enable_snapshots()
    check_fault(rig, rig.mlx4.fault("closing-cmd"), devlink, log_mark)


@pytest.mark.slow
def test_command_timeout_with_the_interface_up(rig: Rig, log_mark: int) -> None:
    rig.device.set_health(health_buffer(0xE3))
    rig.mlx4.enable_snapshots()
    # One channel: the 60 s the driver waits is the same for both, and the reading is not.
    check_fault(rig, rig.mlx4.fault("cmd-timeout"), rig_channel(rig, "netlink"), log_mark)


def test_five_fault_cycles_with_the_interface_up_leak_nothing(rig: Rig, log_mark: int) -> None:
    rig.mlx4.enable_snapshots()
    rig.mlx4.fault("catas")  # the first cycle allocates what later ones reuse
    first = leak_counters(rig)
    for n in range(FAULT_CYCLES - 1):
        rig.device.set_health(health_buffer(0xF0 + n))
        cycle = rig.mlx4.fault("catas")
        for region, snapshot in cycle.ids.items():  # the regions keep 8 snapshots at most
            rig.netlink.delete(rig.region(region), snapshot)
    last = leak_counters(rig)
    assert {k: last[k] for k in ("netdevs", "vmalloc", "irqs")} == {
        k: first[k] for k in ("netdevs", "vmalloc", "irqs")
    }
    # Slab churns (RCU, caches): four cycles may not keep more than a cycle's worth, 2%.
    assert last["slab_objects"] <= first["slab_objects"] * 1.02, (first, last)
    up(rig)
    assert_no_kernel_trouble(rig, failed_commands=True, since=log_mark)
