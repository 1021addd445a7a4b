"""How the e2e tests go out to pytest-xdist workers (`--dist loadscope`): in work units, the
costliest first.

A unit's tests run in one worker, one after the other, so the tests that share a rig share a
unit. By default a unit is a module (its module-scoped rigs stay in one worker). Two kinds of
change to that (UNITS):

* The modules that use the session rig (`rig_session`, or `rig` left at it) go to two units:
  every worker that runs one of them restores a session rig of its own (~2 CPU-s a rig
  under TCG), and with four workers that was four. (test_verdicts.py's one such test stays
  with its module, whose other tests start rigs of their own.)
* The longest modules are split where the split costs at most one rig start: test_traffic.py's
  five fault cycles get their own traffic rig, test_replay.py's replays boot one each anyway.
  On two busy cores a worker gets about half of one, so the longest unit bounds the run.
* A unit's last test is a short one where it can be. A worker runs a test only once it holds
  the next one (pytest's teardown needs it), so xdist hands a worker its next unit when two
  of its tests are left: that unit is then bound to the worker while the last two run, and a
  unit of one long test binds it for the whole test (the five traffic cycles took
  test_matrix.py with them for 64 s while the other workers ran dry). Here a worker gets its
  next unit with one test left, and the one-test units get a short test after them: the ping
  (the last test of test_traffic.py) joins the five cycles, test_tuxrun.py joins the matrix;
  test_saved.py runs its rebuild first.

Then the units go out by what they take (SECONDS: seconds of test time in a warped, saved-boot
suite run on 4 workers, the mean of two in session 17; a unit not listed goes after them) and
xdist keeps that order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

SESSION_A = "session rig (snapshots, regions)"
SESSION_B = "session rig (fault paths, params, mstflint)"
FIVE_CYCLES = "test_traffic.py (five cycles, ping)"
MATRIX = "test_matrix.py, test_tuxrun.py"
UNITS = {
    "test_snapshots.py": SESSION_A,
    "test_regions.py": SESSION_A,
    "test_placement.py": SESSION_A,
    "test_fault_paths.py": SESSION_B,
    "test_params.py": SESSION_B,
    "test_mstflint.py": SESSION_B,
    "test_pause.py": SESSION_B,
    "test_traffic.py::test_five_catas_under_traffic_leave_no_warning_and_leak_nothing": FIVE_CYCLES,
    "test_traffic.py::test_ping_100_without_loss": FIVE_CYCLES,
    "test_matrix.py": MATRIX,
    "test_tuxrun.py": MATRIX,
    "test_replay.py::test_mstregdump_capture_replays_with_its_coverage": "test_replay.py (2)",
    "test_replay.py::test_wrong_expectation_fails_exit_1_and_points_at_the_offset": (
        "test_replay.py (2)"
    ),
}
SECONDS = {
    "test_saved.py": 50,
    SESSION_A: 48,
    SESSION_B: 47,
    FIVE_CYCLES: 42,
    "test_traffic.py": 40,
    "test_en.py": 38,
    "test_verdicts.py": 30,
    "test_acceptance.py": 28,
    MATRIX: 27,
    "test_replay.py": 22,
    "test_replay.py (2)": 20,
    "test_boot.py": 18,
}


def unit(nodeid: str) -> str:
    """The work unit of an e2e test, by its node id (tests/e2e/MODULE::NAME[PARAMS])."""
    path, _, name = nodeid.partition("::")
    if Path(path).parent.name != "e2e":
        return nodeid.rsplit("::", 1)[0]  # xdist's own loadscope rule: the class or module
    module = Path(path).name
    test = f"{module}::{name.split('[', 1)[0]}"
    return UNITS.get(test) or UNITS.get(module) or module


def pytest_configure(config: pytest.Config) -> None:
    if hasattr(config.option, "loadscopereorder"):  # pytest-xdist's --no-loadscope-reorder
        config.option.loadscopereorder = False


@pytest.hookimpl(optionalhook=True)  # only xdist knows it (-p no:xdist)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """loadscope with the units above; every other --dist mode as xdist has it."""
    if config.getoption("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class UnitScheduling(LoadScopeScheduling):  # type: ignore[misc]  # xdist has no types
        def _split_scope(self, nodeid: str) -> str:
            return unit(nodeid)

        def _reschedule(self, node: Any) -> None:
            # xdist 3.8's own, with one test left instead of two (the docstring above).
            if node.shutting_down:
                return
            if not self.workqueue:
                node.shutdown()
                return
            if self._pending_of(self.assigned_work[node]) > 1:
                return
            self._assign_work_unit(node)

    return UnitScheduling(config, log)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The costliest unit first, each unit's tests together and in their order (stable)."""
    units = [unit(item.nodeid) for item in items]
    seen = {u: n for n, u in enumerate(dict.fromkeys(units))}  # in order of first appearance
    ranked = sorted(
        zip(items, units, strict=True), key=lambda pair: (-SECONDS.get(pair[1], 0), seen[pair[1]])
    )
    items[:] = [item for item, _ in ranked]
