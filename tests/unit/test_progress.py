"""run_logged: a tool's output goes to its log, failures and overruns name the step."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from rig.errors import ProvisionError
from rig.progress import run_logged


def test_output_goes_to_the_log(tmp_path: Path) -> None:
    log = tmp_path / "step.log"
    run_logged(["sh", "-c", "echo hello"], log, "greeting")
    assert "hello" in log.read_text()


def test_a_failure_names_the_step_and_its_exit(tmp_path: Path) -> None:
    with pytest.raises(ProvisionError, match=r"broken step failed \(exit 3\)"):
        run_logged(["sh", "-c", "echo oops; exit 3"], tmp_path / "step.log", "broken step")


def test_an_overrun_is_killed_with_its_children(tmp_path: Path) -> None:
    # The background sleep keeps the output pipe open: only killing the whole group ends it.
    t0 = time.monotonic()
    with pytest.raises(ProvisionError, match=r"slow step did not finish in 1 s; killed"):
        run_logged(
            ["sh", "-c", "sleep 60 & sleep 60"], tmp_path / "step.log", "slow step", timeout=1
        )
    assert time.monotonic() - t0 < 30
