"""`rig matrix` without a VM: the table, the exit status, its four files, the CI matrix, and
a cell the rig cannot run (a kernel directory that does not exist) through the real CLI."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import kcidb_io
import pytest

from rig.cli import main
from rig.commands.matrix import ci_matrix
from rig.errors import UsageError
from rig.jobs.behaviours import ERROR, FAIL, NAMES, PASS, Outcome
from rig.jobs.matrix import (
    RIG_QEMU,
    Cell,
    Matrix,
    MatrixOptions,
    QemuChoice,
    parse_kernels,
    parse_qemus,
    table,
    write_outputs,
)
from rig.jobs.verdict import KernelResult
from tests.browser import dump_dom, read_png, render
from tests.unit.ktap_parser import parse


def cell(spec: str, release: str, qemu: str = "", ran: str = "", **statuses: str) -> Cell:
    k = KernelResult(spec, spec, release, "debian", qemu=ran)
    for name in NAMES:
        status = statuses.get(name.replace("-", "_"), PASS)
        k.outcomes[name] = Outcome(status, "" if status == PASS else f"{name} broke", {}, 1.0)
    return Cell(spec, k, qemu=qemu)


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
    assert "ERROR</span>rig matrix" in (tmp_path / "run" / "report.html").read_text()


MATRIX_GREEN, MATRIX_RED = (0x8F, 0xD1, 0x9E), (0xD9, 0x36, 0x3E)  # matrixhtml.COLORS


def test_the_page_shows_each_cell_the_versions_and_links_the_replays(tmp_path: Path) -> None:
    """report.html in headless Chromium: a failing matrix with a cell the rig could not run."""
    matrix = two()
    matrix.cells[0].versions = {"qemu": "10.2.2", "kernel": "6.1.0-41-cloud-amd64"}
    matrix.cells.append(Cell("deb:nope", KernelResult("deb:nope", "deb:nope")))
    matrix.cells[2].could_not_run("no such Debian release")
    replay = tmp_path / "deb_bookworm" / "replay"
    replay.mkdir(parents=True)
    (replay / "report.html").write_text("<p>replay</p>")
    write_outputs(matrix, tmp_path)
    page = tmp_path / "report.html"
    dom = render(page, tmp_path / "page.png", 1200, 1600)
    words = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom.split("<body", 1)[1]))
    assert "ERROR rig matrix" in words and "the rig could not run a cell (exit 2)" in words
    assert "deb:nope: the rig could not run it: no such Debian release" in words
    assert "deb:trixie 6.12.57+deb13-cloud-amd64 debian not started" in words
    assert "deb:bookworm 6.1.0-41-cloud-amd64 debian 10.2.2" in words
    assert "second-fault on deb:trixie: fail: second-fault broke" in words
    rows = re.findall(r"<tr><td><b>([a-z-]+)</b>.*?</tr>", dom)
    assert rows == list(NAMES)
    html = page.read_text()
    assert html.count("href='deb_bookworm/replay/report.html'") == 2  # versions and the cell
    assert "deb_trixie/replay" not in html and "deb_nope/replay" not in html
    assert not re.search(r"<script|<link|<img|src=|https?://", html)
    png = read_png(tmp_path / "page.png")
    assert png.variance() > 500  # a drawn page, not a blank one
    assert png.count(MATRIX_GREEN) > 2 * len(NAMES) * 1000  # the passing cells' fill
    assert png.count(MATRIX_RED) > 1000  # trixie's second fault


def test_a_passing_matrix_says_pass(tmp_path: Path) -> None:
    write_outputs(Matrix([cell("deb:bookworm", "6.1.0-41-cloud-amd64")]), tmp_path)
    words = re.sub(r"<[^>]+>", " ", dump_dom(tmp_path / "report.html"))
    assert "PASS rig matrix" in re.sub(r"\s+", " ", words)
    assert "What did not pass" not in words


# --- the QEMU axis ---------------------------------------------------------------------------


def test_qemu_axis_parses_versions_and_paths(tmp_path: Path) -> None:
    assert parse_qemus(None) == (RIG_QEMU,)
    assert parse_qemus("10.2.2, 1:11.1.3+ds-1") == (
        QemuChoice(version="10.2.2"),
        QemuChoice(version="1:11.1.3+ds-1"),
    )
    binary = tmp_path / "qemu-system-x86_64"
    assert parse_qemus(f"{binary},10.2.2")[0] == QemuChoice(path=binary)
    assert parse_qemus("./q")[0].label == str(Path.cwd() / "q")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (" , ", "no QEMU given"),
        ("10.2.2,10.2.2", "named twice"),
        ("9.2.0", "needs QEMU >= 10.1"),
        ("latest", "needs QEMU >= 10.1"),
    ],
)
def test_bad_qemu_axis(text: str, problem: str) -> None:
    with pytest.raises(UsageError, match=problem):
        parse_qemus(text)


def test_cells_are_kernel_by_qemu_kernel_major(tmp_path: Path) -> None:
    q1, q2 = QemuChoice(version="10.2.2"), QemuChoice(version="11.1.3")
    opts = MatrixOptions(("deb:bookworm", "deb:sid"), tmp_path, qemus=(q1, q2))
    assert opts.cells() == [
        ("deb:bookworm", q1),
        ("deb:bookworm", q2),
        ("deb:sid", q1),
        ("deb:sid", q2),
    ]
    assert MatrixOptions(("a",), tmp_path).cells() == [("a", RIG_QEMU)]


def two_qemus() -> Matrix:
    return Matrix(
        [
            cell("deb:trixie", "6.12.57+deb13-cloud-amd64", "10.2.2", "10.2.2"),
            cell("deb:trixie", "6.12.57+deb13-cloud-amd64", "11.1.3", "11.1.3", reload=FAIL),
        ]
    )


def test_table_names_each_cells_qemu() -> None:
    lines = table(two_qemus()).splitlines()
    assert lines[0].split() == ["behaviour", "deb:trixie", "deb:trixie"]
    assert lines[2].split() == ["qemu", "10.2.2", "11.1.3"]
    assert set(lines[3]) == {"-", " "}
    rows = {line.split()[0]: line.split()[1:] for line in lines[4 : 4 + len(NAMES)]}
    assert rows["reload"] == ["pass", "FAIL"]
    assert "  reload on deb:trixie qemu=11.1.3: fail: reload broke" in lines
    # Without an axis, no qemu row: the table of a one-QEMU matrix is what it always was.
    assert "qemu" not in table(two()).split()


def test_outputs_name_the_qemu(tmp_path: Path) -> None:
    write_outputs(two_qemus(), tmp_path)
    doc = json.loads((tmp_path / "matrix.json").read_text())
    assert [(c["kernel"], c["qemu"], c["qemu_version"]) for c in doc["cells"]] == [
        ("deb:trixie", "10.2.2", "10.2.2"),
        ("deb:trixie", "11.1.3", "11.1.3"),
    ]
    suites = ET.parse(tmp_path / "junit.xml").getroot().findall("testsuite")
    assert [s.get("name") for s in suites] == [
        "deb:trixie qemu=10.2.2 6.12.57+deb13-cloud-amd64",
        "deb:trixie qemu=11.1.3 6.12.57+deb13-cloud-amd64",
    ]
    root = parse((tmp_path / "matrix.ktap").read_text())
    assert [(t.name, t.ok) for t in root.subtests] == [
        ("deb:trixie qemu=10.2.2 6.12.57+deb13-cloud-amd64", True),
        ("deb:trixie qemu=11.1.3 6.12.57+deb13-cloud-amd64", False),
    ]
    doc = json.loads((tmp_path / "kcidb.json").read_text())
    kcidb_io.schema.V5_0.validate_exactly(doc)
    assert [b["misc"]["qemu"] for b in doc["builds"]] == ["10.2.2", "11.1.3"]
    assert len({b["id"] for b in doc["builds"]}) == 2
    assert doc["tests"][-1]["environment"]["comment"].startswith("QEMU 11.1.3 (TCG)")


def test_ci_matrix_with_a_qemu_axis() -> None:
    qemus = parse_qemus("10.2.2,11.1.3")
    assert json.loads(ci_matrix(("deb:sid",), "github", qemus)) == {
        "include": [
            {"kernel": "deb:sid", "qemu": "10.2.2"},
            {"kernel": "deb:sid", "qemu": "11.1.3"},
        ]
    }
    assert ci_matrix(("deb:sid",), "gitlab", qemus).splitlines() == [
        "parallel:",
        "  matrix:",
        '    - KERNEL: "deb:sid"',
        '      QEMU: "10.2.2"',
        '    - KERNEL: "deb:sid"',
        '      QEMU: "11.1.3"',
    ]


def test_a_qemu_too_old_is_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(["matrix", "--kernels", "deb:sid", "--qemu", "10.2.2,8.2", "--list"])
    err = capsys.readouterr().err
    assert status == 2 and len(err.splitlines()) == 1
    assert "--qemu 8.2: " in err and ">= 10.1" in err


def test_cells_the_rig_cannot_run_name_their_qemu(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "no-such-kernel"
    argv = ["-q", "matrix", "--kernels", str(missing), "--qemu", "10.2.2,11.1.3", "--serial"]
    status = main([*argv, "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert status == 2
    assert f"rig: error: {missing} qemu=10.2.2: the rig could not run it: " in err
    assert f"rig: error: {missing} qemu=11.1.3: the rig could not run it: " in err
    doc = json.loads((tmp_path / "run" / "matrix.json").read_text())
    assert [c["qemu"] for c in doc["cells"]] == ["10.2.2", "11.1.3"]
