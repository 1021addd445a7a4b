"""A paused rig (Rig.pause: QMP stop) costs the host no CPU and comes back as it was; the
pytest plugin pauses the session rig while tests that do not ask for it run."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from rig.pytest_plugin import session_rig
from rig.rig import Rig

pytestmark = pytest.mark.e2e

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User plus system time of every thread of `pid` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def test_a_paused_rig_takes_no_cpu_and_resumes(rig: Rig) -> None:
    qemu = rig.processes()["QEMU"]
    rig.pause()
    try:
        assert rig.paused
        used = cpu_seconds(qemu)
        time.sleep(1.0)  # the measurement's window: CPU time is what it counts
        # An idle warped guest takes ~0.15 s of QEMU's CPU a second (mlx4_en's statistics);
        # a stopped one only its main loop's odd wake-up (0.03 s seen once).
        assert cpu_seconds(qemu) - used <= 0.06, "the paused guest still ran"
    finally:
        rig.resume()
    assert not rig.paused
    assert rig.mlx4.bound().handle == rig.dev_handle


def test_the_session_rig_rests_through_a_test_that_does_not_use_it(
    pytestconfig: pytest.Config,
) -> None:
    session = session_rig(pytestconfig)
    assert session is not None, "the test before this one started the session rig"
    assert session.paused


def test_and_runs_again_for_the_next_test_that_does(rig: Rig) -> None:
    assert not rig.paused
    assert rig.sh("echo up").stdout.strip() == "up"
