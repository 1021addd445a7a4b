"""tests/conftest.py's work units and their scheduler, driven as xdist's controller does."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from tests.conftest import FIVE_CYCLES, MATRIX, pytest_xdist_make_scheduler, unit


class Config:
    """What LoadScopeScheduling reads of pytest's config: one worker, --dist loadscope, the
    units in their order (tests/conftest.py turns xdist's reordering off)."""

    option = SimpleNamespace(loadscopereorder=False)

    def getoption(self, name: str) -> Any:
        return {"dist": "loadscope"}[name]

    def getvalue(self, name: str) -> Any:
        return {"tx": ["popen"]}[name]


class Worker:
    """A worker as the scheduler sees it: the test indices it was sent."""

    shutting_down = False

    def __init__(self) -> None:
        self.sent: list[list[int]] = []

    def send_runtest_some(self, indices: list[int]) -> None:
        self.sent.append(indices)

    def shutdown(self) -> None:
        self.shutting_down = True


def test_the_one_test_units_have_a_short_test_after_them() -> None:
    assert unit("tests/e2e/test_traffic.py::test_ping_100_without_loss") == FIVE_CYCLES
    five = (
        "tests/e2e/test_traffic.py::test_five_catas_under_traffic_leave_no_warning_and_leak_nothing"
    )
    assert unit(five) == FIVE_CYCLES
    assert unit("tests/e2e/test_traffic.py::test_catas_during_a_tcp_transfer") == "test_traffic.py"
    assert unit("tests/e2e/test_tuxrun.py::test_a") == unit("tests/e2e/test_matrix.py::b") == MATRIX
    assert unit("tests/unit/test_x.py::Class::test_y") == "tests/unit/test_x.py::Class"


def test_a_worker_gets_its_next_unit_with_one_test_left() -> None:
    collection = [
        "tests/e2e/test_en.py::test_a",
        "tests/e2e/test_en.py::test_b",
        "tests/e2e/test_en.py::test_c",
        "tests/e2e/test_boot.py::test_d",
    ]
    scheduler = pytest_xdist_make_scheduler(Config(), None)  # type: ignore[arg-type]
    worker = Worker()
    scheduler.add_node(worker)
    scheduler.add_node_collection(worker, collection)
    scheduler.schedule()
    assert worker.sent == [[0, 1, 2]]
    scheduler.mark_test_complete(worker, 0)
    assert worker.sent == [[0, 1, 2]], "two tests left: the next unit waits"
    scheduler.mark_test_complete(worker, 1)
    assert worker.sent == [[0, 1, 2], [3]], "one test left: the next unit goes out"
    assert not worker.shutting_down
    scheduler.mark_test_complete(worker, 2)
    assert worker.shutting_down, "nothing left to hand out: its last test runs, then it ends"
