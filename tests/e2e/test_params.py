"""The devlink parameters that decide whether a fault leaves snapshots, and how a reload
applies them (checklist items 16, 17, 22)."""

from __future__ import annotations

import pytest

from rig.rig import Rig
from tests.e2e.support import (
    SNAPSHOTS_DISABLED,
    assert_no_kernel_trouble,
    catas_snapshot,
    catas_without_snapshot,
    param,
    rules,
)

pytestmark = pytest.mark.e2e


@pytest.fixture
def fresh(rig_session: Rig) -> Rig:
    """A newly probed driver: every parameter at its default, no snapshots."""
    rig_session.mlx4.reprobe()
    return rig_session


def test_snapshots_are_off_by_default_and_a_fault_then_takes_none(fresh: Rig) -> None:
    assert param(fresh, "region_snapshot_enable") == {"runtime": False, "driverinit": False}
    line = catas_without_snapshot(fresh, SNAPSHOTS_DISABLED)
    assert SNAPSHOTS_DISABLED in line
    assert fresh.mlx4.snapshot_ids() == {"cr-space": [], "fw-health": []}
    assert_no_kernel_trouble(fresh)


def set_snapshot_enable(rig: Rig, runtime: bool, driverinit: bool) -> None:
    for cmode, value in (("runtime", runtime), ("driverinit", driverinit)):
        rig.devlink.param_set(rig.dev_handle, "region_snapshot_enable", str(value).lower(), cmode)
    assert param(rig, "region_snapshot_enable") == {"runtime": runtime, "driverinit": driverinit}


def test_driverinit_value_takes_effect_at_reload(rig: Rig) -> None:
    set_snapshot_enable(rig, runtime=False, driverinit=True)
    rig.mlx4.reload()
    assert param(rig, "region_snapshot_enable") == {"runtime": True, "driverinit": True}
    before = rig.mlx4.snapshot_ids()
    in_use = set(before["cr-space"]) | set(before["fw-health"])
    snap = catas_snapshot(rig, 10)
    assert snap.id == rules(rig).next_snapshot_id(in_use, sorted(in_use))
    assert rig.mlx4.snapshot_ids() == {r: sorted([*ids, snap.id]) for r, ids in before.items()}
    # The catas restart is no reload: the runtime value survives it.
    assert param(rig, "region_snapshot_enable")["runtime"] is True


def test_reload_resets_a_runtime_only_value(rig: Rig) -> None:
    set_snapshot_enable(rig, runtime=True, driverinit=False)
    rig.mlx4.reload()
    assert param(rig, "region_snapshot_enable") == {"runtime": False, "driverinit": False}
    assert_no_kernel_trouble(rig)
