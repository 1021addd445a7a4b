"""`rig matrix` end to end: the packaged kernel as one cell on a one-worker Dask cluster
(two boots: measured 6 min on a 2-core machine shared with other VMs), every behaviour
passing, its KTAP read back, its KCIDB JSON validated and its report.html rendered in headless
Chromium. More kernels run the same code per cell; the distribution over two workers is
tests/unit/test_matrix_dask.py's."""

from __future__ import annotations

import json
import re
from pathlib import Path

import kcidb_io
import pytest

from rig.cli import main
from rig.jobs.behaviours import NAMES
from rig.rig import RigConfig, resolve_boot
from tests.browser import read_png, render
from tests.unit.ktap_parser import parse

pytestmark = pytest.mark.e2e


def test_one_kernel_on_dask(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], rig_config: RigConfig
) -> None:
    out = tmp_path / "run"
    status = main(["matrix", "--kernels", "deb:bookworm", "--workers", "1", "--out", str(out)])
    printed = capsys.readouterr().out.splitlines()
    assert status == 0, printed
    assert printed[0].split() == ["behaviour", "deb:bookworm"]
    rows = {line.split()[0]: line.split()[1] for line in printed[3 : 3 + len(NAMES)]}
    assert rows == dict.fromkeys(NAMES, "pass")
    doc = json.loads((out / "matrix.json").read_text())
    assert doc["exit_status"] == 0 and doc["cells"][0]["release"]
    (kernel,) = parse((out / "matrix.ktap").read_text()).subtests
    assert kernel.ok and [t.name for t in kernel.subtests] == list(NAMES)
    kcidb_io.schema.V5_0.validate_exactly(json.loads((out / "kcidb.json").read_text()))
    replay = json.loads((out / "deb_bookworm" / "replay" / "report.json").read_text())
    assert replay["boot"] == resolve_boot(rig_config.boot)  # --rig-boot reaches its rigs
    dom = render(out / "report.html", tmp_path / "matrix.png", 1200, 1000)
    words = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom))
    cell = doc["cells"][0]
    row = f"deb:bookworm {cell['release']} {cell['origin']} {cell['versions']['qemu']}"
    assert "PASS rig matrix" in words and row in words
    assert "href='deb_bookworm/replay/report.html'" in (out / "report.html").read_text()
    png = read_png(tmp_path / "matrix.png")
    assert png.variance() > 500  # a drawn page, not a blank one
    assert png.count((0x8F, 0xD1, 0x9E)) > len(NAMES) * 1000  # every cell's pass fill
