"""`rig coverage` end to end on a small run: one `rig replay` (catas) on the coverage kernel.

The first run builds the coverage kernel (`rig build-kernel --coverage`, cached after: see
`tox -e coverage` for the cold time), then boots it once: real QEMU, kernel, driver, gcov.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from rig import cli
from rig.jobs.coverage import COVERAGE_JSON, HTML

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.coverage]

CRDUMP = "drivers/net/ethernet/mellanox/mlx4/crdump.c"
# Reached only on a virtual function (mlx4_enter_error_state calls it if mlx4_is_slave):
# the emulated card is a physical function without SR-IOV, so no run of the rig gets there.
UNREACHABLE = "mlx4_reset_slave"


def test_a_replay_on_the_coverage_kernel_hits_the_crdump(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "coverage"
    assert cli.main(["coverage", "--out", str(out), "--replay"]) == 0
    data: dict[str, Any] = json.loads((out / COVERAGE_JSON).read_text())
    assert data["runs"] == 1, "one VM, one set of counters"
    functions = {f["function"]: f for f in data["functions"]}
    collect = functions["mlx4_crdump_collect"]
    assert collect["calls"] >= 1 and collect["lines_hit"] > 0
    assert functions[UNREACHABLE]["calls"] == 0
    assert functions[UNREACHABLE]["lines_hit"] == 0
    crdump = data["files"][CRDUMP]
    assert 0 < crdump["lines_hit"] <= crdump["lines"] and crdump["branches"] > 0
    assert any("region" in name for name in functions), "devlink's region functions listed"
    table = capsys.readouterr().out
    assert CRDUMP in table and "mlx4_crdump_collect" in table
    page = out / HTML
    assert "crdump.c" in page.read_text()
    # --html-details: a page per file, with the source lines.
    assert any("mlx4_crdump_collect" in p.read_text() for p in page.parent.glob("*.html"))
