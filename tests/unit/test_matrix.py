"""`rig matrix` without a VM: the table, the exit status, its four files, the CI matrix, and
a cell the rig cannot run (a kernel directory that does not exist) through the real CLI."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import kcidb_io
import pytest

from rig.cli import main
from rig.commands.matrix import ci_matrix
from rig.errors import UsageError
from rig.jobs.behaviours import ERROR, FAIL, NAMES, PASS, Outcome
from rig.jobs.matrix import Cell, Matrix, parse_kernels, table, write_outputs
from rig.jobs.verdict import KernelResult
from tests.unit.ktap_parser import parse


def cell(spec: str, release: str, **statuses: str) -> Cell:
    k = KernelResult(spec, spec, release, "debian")
    for name in NAMES:
        status = statuses.get(name.replace("-", "_"), PASS)
        k.outcomes[name] = Outcome(status, "" if status == PASS else f"{name} broke", {}, 1.0)
    return Cell(spec, k)


def two() -> Matrix:
    return Matrix(
        [
            cell("deb:bookworm", "6.1.0-41-cloud-amd64"),
            cell("deb:trixie", "6.12.57+deb13-cloud-amd64", second_fault=FAIL),
        ]
    )


def test_table_is_kernel_by_behaviour() -> None:
    lines = table(two()).splitlines()
    assert lines[0].split() == ["behaviour", "deb:bookworm", "deb:trixie"]
    assert lines[1].split() == ["6.1.0-41-cloud-amd64", "6.12.57+deb13-cloud-amd64"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[3 : 3 + len(NAMES)]}
    assert list(rows) == list(NAMES)
    assert rows["second-fault"] == ["pass", "FAIL"] and rows["probe"] == ["pass", "pass"]
    assert "  second-fault on deb:trixie: fail: second-fault broke" in lines


@pytest.mark.parametrize(
    ("cells", "status"),
    [
        ([cell("a", "1"), cell("b", "2")], 0),
        ([cell("a", "1"), cell("b", "2", reload=ERROR)], 1),
        ([cell("a", "1", probe=FAIL), Cell("b", KernelResult("b", "b"), "no such kernel")], 2),
    ],
)
def test_exit_status(cells: list[Cell], status: int) -> None:
    assert Matrix(cells).exit_status == status


def test_outputs(tmp_path: Path) -> None:
    write_outputs(two(), tmp_path)
    doc = json.loads((tmp_path / "matrix.json").read_text())
    assert doc["exit_status"] == 1
    assert [c["kernel"] for c in doc["cells"]] == ["deb:bookworm", "deb:trixie"]
    assert doc["cells"][1]["outcomes"]["second-fault"]["status"] == FAIL
    suites = ET.parse(tmp_path / "junit.xml").getroot().findall("testsuite")
    assert [(s.get("tests"), s.get("failures")) for s in suites] == [
        (str(len(NAMES)), "0"),
        (str(len(NAMES)), "1"),
    ]
    root = parse((tmp_path / "matrix.ktap").read_text())
    assert [(t.name, t.ok) for t in root.subtests] == [
        ("deb:bookworm 6.1.0-41-cloud-amd64", True),
        ("deb:trixie 6.12.57+deb13-cloud-amd64", False),
    ]
    assert [t.name for t in root.subtests[1].subtests if not t.ok] == ["second-fault"]
    kcidb_io.schema.V5_0.validate_exactly(json.loads((tmp_path / "kcidb.json").read_text()))


@pytest.mark.parametrize(
    ("text", "patches", "problem"),
    [
        (" , ", None, "no kernel given"),
        ("deb:sid,deb:sid", None, "named twice"),
        ("deb:sid", Path("p"), "build: kernels"),
    ],
)
def test_bad_kernels(text: str, patches: Path | None, problem: str) -> None:
    with pytest.raises(UsageError, match=problem):
        parse_kernels(text, patches)


def test_ci_matrix() -> None:
    kernels = ("deb:bookworm", "build:6.1")
    assert json.loads(ci_matrix(kernels, "github")) == {
        "include": [{"kernel": "deb:bookworm"}, {"kernel": "build:6.1"}]
    }
    assert ci_matrix(kernels, "gitlab").splitlines() == [
        "parallel:",
        "  matrix:",
        '    - KERNEL: "deb:bookworm"',
        '    - KERNEL: "build:6.1"',
    ]


def test_a_cell_the_rig_cannot_run_is_exit_2_and_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "no-such-kernel"
    status = main(["-q", "matrix", "--kernels", str(missing), "--out", str(tmp_path / "run")])
    out, err = capsys.readouterr()
    assert status == 2
    assert f"rig: error: {missing}: the rig could not run it: " in err
    assert "not a directory" in err and out.splitlines()[-1] == "ERROR"
    doc = json.loads((tmp_path / "run" / "matrix.json").read_text())
    assert doc["exit_status"] == 2 and "not a directory" in doc["cells"][0]["error"]
