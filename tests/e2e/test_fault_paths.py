"""Every way into mlx4's error flow, and the switches that keep it from taking a crdump
(checklist items 18, 19): a failing closing command and a command that never completes (both
during `devlink dev reload`), `internal_error_reset` false, firmware without a health buffer.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from cx3 import layout as cr
from cx3 import opcodes
from rig import builtin
from rig.pytest_plugin import rig_channel
from rig.rig import Rig
from tests.e2e.support import (
    CRDUMP_TIMEOUT,
    NO_HEALTH_BUFFER,
    Snapshot,
    assert_no_kernel_trouble,
    assert_same_bytes,
    be32,
    catas_without_snapshot,
    catas_words,
    param,
    reload_snapshot,
    rules,
)

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def fresh_driver(rig_session: Rig) -> Rig:
    rig_session.mlx4.reprobe()
    rig_session.device.load_crspace(builtin.crspace_image())
    return rig_session


@pytest.fixture
def rig(fresh_driver: Rig) -> Iterator[Rig]:
    """The session rig with snapshots on in both cmodes (a reload re-applies driverinit
    values) and the device's knobs back at their defaults afterwards."""
    fresh_driver.mlx4.enable_snapshots("runtime", "driverinit")
    yield fresh_driver
    fresh_driver.device.fault("clear")
    fresh_driver.device.fault("advertise_health", enabled=True)


def command_fault(rig: Rig, kind: str, n: int) -> Snapshot:
    """A reload-triggered fault, checked against the snapshots that were there before."""
    before = rig.mlx4.snapshot_ids()
    in_use = set(before["cr-space"]) | set(before["fw-health"])
    snap = reload_snapshot(rig, kind, n)
    assert snap.id == rules(rig).next_snapshot_id(in_use, sorted(in_use))
    assert rig.mlx4.snapshot_ids() == {r: sorted([*ids, snap.id]) for r, ids in before.items()}
    return snap


def check_command_fault_snapshot(rig: Rig, snap: Snapshot) -> None:
    assert_same_bytes(snap.truth.health, snap.health, "device truth vs health loaded")
    # Over netlink, as test_traffic's checks: the CLI's 1 MiB JSON costs the guest ~1.4 s.
    netlink = rig_channel(rig, "netlink")
    assert_same_bytes(netlink.dump(rig.region("fw-health"), snap.id), snap.health, "fw-health")
    image = netlink.dump(rig.region("cr-space"), snap.id)
    assert_same_bytes(image, snap.truth.image, "cr-space")
    assert be32(image, cr.BLOCK_VOLATILE) == 1
    assert be32(image, cr.CATAS_OFFSET) == 0, "no internal error was injected"
    dmesg = rig.dmesg()
    assert f"crdump: added snapshot {snap.id} to devlink region cr-space" in dmesg
    assert "device is going to be reset" in dmesg
    assert_no_kernel_trouble(rig)


def test_failing_closing_command_takes_a_crdump(rig: Rig) -> None:
    snap = command_fault(rig, "closing-cmd", 20)
    assert rig.device.state()["faults"]["closing_cmd"] is None, "the fault was not hit"
    failed = [
        e
        for e in rig.device.events(0).events
        if e["kind"] == "cmd" and e["t"] < snap.truth.t and e.get("status")
    ]
    assert failed, "no command failed before the crdump"
    opcode, status = failed[-1]["opcode"], failed[-1]["status"]
    assert opcode in opcodes.CLOSING
    assert f"command {opcode:#x} failed: fw status = {status:#x}" in rig.dmesg()
    check_command_fault_snapshot(rig, snap)


@pytest.mark.slow
def test_command_that_never_completes_takes_a_crdump(rig: Rig) -> None:
    # The driver's 60 s are measured on the guest's clock, from a line logged before the
    # fault is armed: on the warped clock (docs/clock.md) the host's clock says nothing of it.
    rig.sh(f"echo {ARMING} > /dev/kmsg")
    snap = command_fault(rig, "cmd-timeout", 21)
    hung = [e for e in rig.device.events(0).events if e["kind"] == "cmd" and e.get("hung")]
    assert len(hung) == 1, f"expected one hung command, got {hung}"
    dmesg = rig.dmesg()
    timed_out = printk_time(dmesg, f"command {hung[0]['opcode']:#x} timed out")
    assert timed_out - printk_time(dmesg, ARMING) >= 55, "the driver gave up before 60 s"
    crdump = printk_time(dmesg, f"crdump: added snapshot {snap.id} to devlink region cr-space")
    assert crdump >= timed_out, "crdump before the driver's 60 s timeout"
    check_command_fault_snapshot(rig, snap)


ARMING = "rig-e2e: arming cmd-timeout"


def printk_time(dmesg: str, text: str) -> float:
    """The printk time of the last kernel log line holding `text`."""
    times = re.findall(rf"^\[\s*(\d+\.\d+)\] .*{re.escape(text)}", dmesg, re.M)
    assert times, f"no kernel line with {text!r}"
    return float(times[-1])


def test_internal_error_reset_false_means_no_reset_and_no_crdump(rig: Rig) -> None:
    rig.devlink.param_set(rig.dev_handle, "internal_error_reset", "false", "runtime")
    before = rig.mlx4.snapshot_ids()
    crdumps = rig.device.state()["crdumps"]
    resets = rig.mlx4.kmsg_count("device is going to be reset")
    last_word = f"buf[{cr.CATAS_DWORDS - 1:02x}]"  # poll_catas's dump ends with this line
    dumped = rig.mlx4.kmsg_count(last_word)
    rig.device.fault("catas", words=catas_words(30))
    rig.wait_kmsg(last_word, nth=dumped + 1, timeout=CRDUMP_TIMEOUT)
    # poll_catas decides right there: without internal_error_reset it queues no reset work
    # and stops polling. The reload below takes the devlink lock such work would need, so
    # once it is through, a reset that was coming would have happened.
    rig.mlx4.reload()
    assert rig.mlx4.kmsg_count("device is going to be reset") == resets
    assert rig.device.state()["crdumps"] == crdumps, "the driver read BAR0 for a crdump"
    assert rig.mlx4.snapshot_ids() == before
    # The reload re-applied the driverinit value (true) and reset the device (catas cleared).
    assert param(rig, "internal_error_reset") == {"runtime": True, "driverinit": True}
    assert rig.device.read_bar0(cr.CATAS_OFFSET, 4) == bytes(4)
    assert_no_kernel_trouble(rig)


def test_firmware_without_health_buffer_means_no_crdump(rig: Rig) -> None:
    rig.device.fault("advertise_health", enabled=False)
    rig.mlx4.reload()  # the driver reads the health-buffer offset in QUERY_DEV_CAP at load
    line = catas_without_snapshot(rig, NO_HEALTH_BUFFER)
    assert NO_HEALTH_BUFFER in line
    rig.device.fault("advertise_health", enabled=True)
    rig.mlx4.reload()
    assert_no_kernel_trouble(rig)
