"""Issue 3's acceptance, on a freshly booted rig, with MSI-X and with INTx (msi_x=0):
probe, regions, two catas faults with snapshots and recovery, reload, rmmod — and no kernel
warning anywhere.

Under INTx QEMU traps the whole BAR while an interrupt is pending, so the driver's 262,144
reads of BAR0 take seconds instead of a fraction of one: same result, slower.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from cx3 import layout as cr
from rig import builtin
from rig.pytest_plugin import RigFactory, rig_channel
from rig.rig import Rig
from tests.e2e.support import (
    MAX_SNAPSHOTS,
    Snapshot,
    assert_no_kernel_trouble,
    assert_same_bytes,
    be32,
    catas_region,
    catas_snapshot,
    rules,
)

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module", params=[True, False], ids=["msix", "intx"])
def rig(request: pytest.FixtureRequest, rig_factory: RigFactory) -> Iterator[Rig]:
    msi_x = bool(request.param)
    booted = rig_factory(msi_x=msi_x, name="msix" if msi_x else "intx")
    yield booted
    rig_factory.stop(booted)  # before the next parameter boots: one VM at a time


@pytest.fixture(scope="module")
def taken(rig: Rig) -> list[Snapshot]:
    """The snapshots the acceptance faults took, in order (filled by the fault tests)."""
    return []


def fault(rig: Rig, taken: list[Snapshot], n: int) -> Snapshot:
    """A catas fault with snapshots on (set again: each test may run on its own)."""
    rig.device.load_crspace(builtin.crspace_image())
    rig.mlx4.enable_snapshots()
    snap = catas_snapshot(rig, n)
    taken.append(snap)
    return snap


def test_probe_lists_the_device_and_two_empty_regions(rig: Rig) -> None:
    assert rig.dev_handle in rig.devlink.devices()
    lines = rig.sh("devlink region show").stdout.splitlines()
    ours = [ln for ln in lines if ln.startswith(rig.dev_handle + "/")]
    max_part = f" max {MAX_SNAPSHOTS}" if rules(rig).reports_max_snapshots else ""
    assert ours == [
        f"{rig.dev_handle}/cr-space: size {cr.SIZE} snapshot []{max_part}",
        f"{rig.dev_handle}/fw-health: size {cr.HEALTH_SIZE} snapshot []{max_part}",
    ]
    mode = "msi_x" if rig.config.msi_x else "INTx"
    irqs = rig.sh("cat /proc/interrupts").stdout
    assert ("mlx4-" in irqs) == rig.config.msi_x, f"mlx4_core should be using {mode}"


def test_catas_fault_snapshots_both_regions_and_recovers(rig: Rig, taken: list[Snapshot]) -> None:
    assert rig.mlx4.snapshot_ids() == {"cr-space": [], "fw-health": []}, "needs a fresh rig"
    added_before = rig.mlx4.kmsg_count("crdump: added snapshot")
    snap = fault(rig, taken, 1)
    assert snap.id == rules(rig).next_snapshot_id(set(), [])
    assert rig.mlx4.snapshot_ids() == {"cr-space": [snap.id], "fw-health": [snap.id]}

    dmesg = rig.dmesg()
    assert dmesg.count("crdump: added snapshot") == added_before + 2
    for region in ("cr-space", "fw-health"):
        assert f"crdump: added snapshot {snap.id} to devlink region {region}" in dmesg
    assert "device was reset successfully" in dmesg
    assert "mlx4_restart_one was ended, ret=0" in dmesg

    channel = rig_channel(rig, "cli")
    assert_same_bytes(snap.truth.health, snap.health, "device truth vs health loaded")
    assert_same_bytes(channel.dump(rig.region("fw-health"), snap.id), snap.health, "fw-health")
    image = channel.dump(rig.region("cr-space"), snap.id)
    assert_same_bytes(image, snap.truth.image, "cr-space")
    assert be32(image, cr.BLOCK_VOLATILE) == 1
    assert be32(image, cr.CR_FILTER) & 1 << 6 == 0
    assert catas_region(image, len(snap.catas)) == snap.catas


def test_device_is_reset_and_probed_again(rig: Rig, taken: list[Snapshot]) -> None:
    snap = taken[-1] if taken else fault(rig, taken, 3)
    after = [e for e in rig.device.events(0).events if e["t"] >= snap.truth.t]
    kinds = [(e["kind"], e.get("name", e.get("source"))) for e in after]
    reset = kinds.index(("reset", "bar0"))
    assert ("cmd", "QUERY_FW") in kinds[reset:], "no re-probe after the reset"
    assert ("cmd", "INIT_HCA") in kinds[reset:]
    state = rig.device.state()
    assert state["hca_initialized"] and not state["hcr_busy"]
    assert rig.sh(f"cat /sys/bus/pci/devices/{rig.dev_handle[4:]}/vendor").stdout.strip() == (
        "0x15b3"
    )


def test_second_fault_takes_the_next_snapshot(rig: Rig, taken: list[Snapshot]) -> None:
    before = rig.mlx4.snapshot_ids()
    snap = fault(rig, taken, 2)
    in_use = set(before["cr-space"]) | set(before["fw-health"])
    assert snap.id == rules(rig).next_snapshot_id(in_use, [s.id for s in taken[:-1]])
    after = rig.mlx4.snapshot_ids()
    for region in ("cr-space", "fw-health"):
        assert after[region] == sorted([*before[region], snap.id])
    health = rig_channel(rig, "netlink").dump(rig.region("fw-health"), snap.id)
    assert_same_bytes(health, snap.health, "fw-health (netlink)")
    assert_no_kernel_trouble(rig)


def test_reload_completes_without_kernel_warnings(rig: Rig) -> None:
    before = rig.mlx4.snapshot_ids()
    rig.mlx4.reload()
    assert "mlx4_core" in rig.sh("ls /sys/bus/pci/drivers").stdout
    assert rig.mlx4.snapshot_ids() == before, "a reload must keep the snapshots"
    assert_no_kernel_trouble(rig)


def test_rmmod_completes_without_kernel_warnings(rig: Rig) -> None:
    rig.mlx4.unload()
    assert rig.dev_handle not in rig.sh("devlink dev show").stdout
    assert "mlx4_core" not in rig.sh("cat /proc/modules").stdout
    assert_no_kernel_trouble(rig)
