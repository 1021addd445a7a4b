"""`rig bench`'s host section against a real model process and real ping-pongs."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from rig import cpus
from rig.bench import host as benchhost


def test_the_host_round_trips_run_against_a_real_model(tmp_path: Path) -> None:
    """The host section end to end, small: every figure gets its samples (a renamed module
    or a second client the model refuses once broke it without a test noticing)."""
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.fail("no C compiler: the host section needs one (apt-get install gcc)")
    figures = benchhost.round_trips(2, tmp_path, reads=50)
    expected = {"rtt.c", "rtt.python", "rtt.model", "rtt.host"}
    if len(os.sched_getaffinity(0)) > 1 and os.environ.get(cpus.PIN_ENV, "1") != "0":
        expected.add("rtt.model_one_cpu")
    assert set(figures) == expected
    for key, values in figures.items():
        assert len(values) == 2 and all(v > 0 for v in values), (key, values)
