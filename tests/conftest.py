"""The order the e2e modules go out to pytest-xdist workers: the longest first.

With `--dist loadscope` each module is one unit of work (its rigs stay in one worker), and
xdist hands the units out largest test count first. test_traffic.py has five tests and runs
longest, so it went out late and its worker was still busy long after the other had
finished. Here the modules are ordered by what they take (MODULE_SECONDS, test time measured
on the defaults: warp, saved VMs, two workers on this repo's 2-core machine) and xdist told to
keep the collection's order; a module not listed goes after them, in its usual order.
"""

from __future__ import annotations

from pathlib import Path

import pytest

# Test seconds per tests/e2e module, one run of the suite on the defaults (session 12).
MODULE_SECONDS = {
    "test_traffic.py": 76,
    "test_snapshots.py": 60,
    "test_replay.py": 49,
    "test_saved.py": 44,
    "test_en.py": 37,
    "test_fault_paths.py": 30,
    "test_acceptance.py": 28,
    "test_matrix.py": 25,
    "test_verdicts.py": 23,
    "test_params.py": 14,
    "test_boot.py": 12,
    "test_regions.py": 9,
    "test_mstflint.py": 5,
}


def pytest_configure(config: pytest.Config) -> None:
    if hasattr(config.option, "loadscopereorder"):  # pytest-xdist's --no-loadscope-reorder
        config.option.loadscopereorder = False


def _cost(item: pytest.Item) -> int:
    path = Path(str(item.path))
    return MODULE_SECONDS.get(path.name, 0) if path.parent.name == "e2e" else 0


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Longest e2e module first; the tests of a module keep their order (a stable sort)."""
    items.sort(key=lambda item: -_cost(item))
