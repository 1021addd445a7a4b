"""kselftest/mlx4_rig.sh through the real CLI: KTAP alone on stdout, exit 4 (skip) when the
rig cannot run, 1 when the kernel failed would come from the rig's own exit 1."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.unit.ktap_parser import parse

SCRIPT = Path(__file__).resolve().parents[2] / "kselftest" / "mlx4_rig.sh"


def wrapper(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RIG": f"{sys.executable} -m rig"}
    return subprocess.run(
        [str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def test_a_cell_the_rig_cannot_run_is_a_skip_with_ktap(tmp_path: Path) -> None:
    missing = tmp_path / "no-kernel"
    r = wrapper("matrix", "--serial", "--kernels", str(missing))
    assert r.returncode == 4, r.stderr
    (cell,) = parse(r.stdout).subtests
    assert not cell.ok and {t.directive for t in cell.subtests} == {"ERROR"}
    assert "not a directory" in cell.subtests[0].diagnostics[0]
    assert "the rig could not run it" in r.stderr


def test_bad_input_to_replay_is_a_skip_with_its_reason(tmp_path: Path) -> None:
    r = wrapper("replay", "--crspace", str(tmp_path / "absent.bin"))
    assert r.returncode == 4, r.stderr
    (job,) = parse(r.stdout).subtests
    assert "cannot read CR-space file" in job.subtests[0].diagnostics[0]


def test_arguments_the_rig_refuses_still_give_ktap() -> None:
    r = wrapper("validate")  # --patches is required: argparse exits 2 before any run
    assert r.returncode == 4
    (only,) = parse(r.stdout).subtests
    assert only.ok and only.directive.startswith("SKIP")
