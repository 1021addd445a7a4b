"""A paused rig (Rig.pause: QMP stop) runs nothing in its guest and comes back as it was; the
pytest plugin pauses the session rig while tests that do not ask for it run."""

from __future__ import annotations

import time
from typing import Any

import pytest

from rig.pytest_plugin import session_rig
from rig.rig import Rig

pytestmark = pytest.mark.e2e


def commands_within(rig: Rig, seconds: float) -> list[dict[str, Any]]:
    """The firmware commands the card answered in the next `seconds` of host time."""
    start = rig.device.events(1 << 62).next
    time.sleep(seconds)  # the window is the measurement
    return [e for e in rig.device.events(start).events if e["kind"] == "cmd"]


def test_a_paused_rig_runs_nothing_and_resumes(rig: Rig) -> None:
    """With its netdevs up, mlx4_en asks the card for statistics every 250 ms of guest time
    (on either clock): a running guest's commands reach the card within a second, a paused
    guest's do not."""
    rig.pause()
    try:
        assert rig.paused
        assert commands_within(rig, 1.0) == []
    finally:
        rig.resume()
    assert not rig.paused
    assert {e["name"] for e in commands_within(rig, 1.0)} >= {"DUMP_ETH_STATS"}
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
