"""`rig validate`'s judgement without a VM: verdicts, the table, validate.json, JUnit XML,
and how a replay report becomes the catas-snapshots outcome."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from rig.formats import validatehtml
from rig.formats.junit import junit_xml
from rig.formats.report import Comparison, Report, SnapshotReport
from rig.jobs.behaviours import ERROR, FAIL, NAMES, PASS, Outcome, replay_outcome
from rig.jobs.verdict import CHANGED, FIXED, REGRESSED, SAME, KernelResult, Verdict, judge, table
from tests.browser import dump_dom


def kernel(role: str, **statuses: str) -> KernelResult:
    k = KernelResult(role, f"build:6.1{'+p' if role == 'patched' else ''}", "6.1.192-rig")
    for name in NAMES:
        status = statuses.get(name.replace("-", "_"), PASS)
        k.outcomes[name] = Outcome(status, "" if status == PASS else f"{name} broke", {"n": 1}, 2.5)
    return k


@pytest.mark.parametrize(
    ("base", "patched", "verdict"),
    [
        (PASS, PASS, SAME),
        (PASS, FAIL, REGRESSED),
        (PASS, ERROR, REGRESSED),
        (FAIL, PASS, FIXED),
        (FAIL, FAIL, SAME),
        (FAIL, ERROR, CHANGED),
    ],
)
def test_judge_by_status(base: str, patched: str, verdict: str) -> None:
    assert judge(Outcome(base), Outcome(patched)) == verdict


def test_judge_same_status_different_observation_is_changed() -> None:
    assert judge(Outcome(PASS, observed={"max": 8}), Outcome(PASS, observed={"max": 4})) == (
        CHANGED
    )


def test_regression_fails_and_is_named() -> None:
    c = Verdict.of(kernel("base"), kernel("patched", catas_snapshots=FAIL, second_fault=FAIL))
    assert c.regressions == ["catas-snapshots", "second-fault"] and not c.ok
    text = table(c)
    lines = text.splitlines()
    assert lines[0].split() == [
        "behaviour",
        "base",
        "(6.1.192-rig)",
        "patched",
        "(6.1.192-rig)",
        "verdict",
    ]
    row = next(ln for ln in lines if ln.startswith("catas-snapshots"))
    assert row.split() == ["catas-snapshots", "pass", "FAIL", "REGRESSED"]
    assert "  catas-snapshots on patched: fail: catas-snapshots broke" in lines
    assert next(ln for ln in lines if ln.startswith("probe")).split() == [
        "probe",
        "pass",
        "pass",
        "same",
    ]


def test_no_change_is_ok_and_has_no_details() -> None:
    c = Verdict.of(kernel("base"), kernel("patched"))
    assert c.ok and c.regressions == []
    assert "details" not in table(c)


def test_a_base_failure_is_shown_but_not_a_regression() -> None:
    c = Verdict.of(kernel("base", reload=FAIL), kernel("patched", reload=FAIL))
    assert c.ok
    assert "  reload on base: fail: reload broke" in table(c).splitlines()


def test_missing_outcome_counts_as_error() -> None:
    patched = kernel("patched")
    del patched.outcomes["reload"]
    c = Verdict.of(kernel("base"), patched)
    assert c.regressions == ["reload"]


def test_json_document(tmp_path: Path) -> None:
    c = Verdict.of(kernel("base"), kernel("patched", kernel_log=FAIL))
    c.timings = {"total": 10.0}
    doc = json.loads(c.write_json(tmp_path / "validate.json").read_text())
    assert doc["schema"] == "mlx4-rig/validate/1"
    assert doc["ok"] is False and doc["regressions"] == ["kernel-log"]
    assert doc["kernels"]["patched"]["spec"] == "build:6.1+p"
    assert [b["name"] for b in doc["behaviours"]] == list(NAMES)
    log = doc["behaviours"][-1]
    assert (log["verdict"], log["base"]["status"], log["patched"]["status"]) == (
        REGRESSED,
        PASS,
        FAIL,
    )


def test_junit_xml_has_a_suite_per_kernel_and_a_comparison() -> None:
    c = Verdict.of(
        kernel("base", reload=ERROR), kernel("patched", reload=ERROR, catas_snapshots=FAIL)
    )
    root = ET.fromstring(junit_xml(c))
    suites = {s.get("name", ""): s for s in root.iter("testsuite")}
    assert sorted(suites) == ["base 6.1.192-rig", "comparison", "patched 6.1.192-rig"]
    base, patched, comp = (
        suites["base 6.1.192-rig"],
        suites["patched 6.1.192-rig"],
        suites["comparison"],
    )
    assert (base.get("tests"), base.get("failures"), base.get("errors")) == (
        str(len(NAMES)),
        "0",
        "1",
    )
    assert (patched.get("failures"), patched.get("errors")) == ("1", "1")
    failed = [tc.get("name") for tc in comp.iter("testcase") if tc.find("failure") is not None]
    assert failed == ["catas-snapshots"]
    case = next(tc for tc in patched.iter("testcase") if tc.get("name") == "catas-snapshots")
    failure = case.find("failure")
    assert failure is not None and failure.get("message") == "catas-snapshots broke"
    assert case.get("classname") == "validate.patched" and case.get("time") == "2.500"


def _snapshot(region: str, snap_id: int, equal: bool) -> SnapshotReport:
    comparisons = [
        Comparison("truth", "cli", equal, 0 if equal else 60, [] if equal else [0]),
        Comparison("truth", "netlink", equal, 0 if equal else 60, [] if equal else [0]),
        Comparison("cli", "netlink", True, 0),
    ]
    return SnapshotReport(
        region,
        snap_id,
        64,
        "x",
        f"{region}-{snap_id}.bin",
        equal,
        comparisons,
        [],
        None if equal else f"{region}-{snap_id}.diff.txt",
    )


def test_replay_outcome_pass(tmp_path: Path) -> None:
    report = Report(
        ok=True,
        snapshots=[_snapshot("cr-space", 0, True), _snapshot("fw-health", 0, True)],
        timings={"total": 30.0},
    )
    outcome = replay_outcome(report, tmp_path)
    assert outcome.status == PASS and outcome.seconds == 30.0
    assert outcome.observed == {
        "cr-space": {"id": 0, "size": 64, "agree": True},
        "fw-health": {"id": 0, "size": 64, "agree": True},
    }


def test_replay_outcome_names_the_region_that_differs(tmp_path: Path) -> None:
    report = Report(
        ok=False, snapshots=[_snapshot("cr-space", 0, True), _snapshot("fw-health", 0, False)]
    )
    outcome = replay_outcome(report, tmp_path)
    assert outcome.status == FAIL
    assert outcome.detail == (
        "fw-health snapshot 0 differs from the device truth in 60 bytes from offset 0x0 "
        f"(CLI and netlink agree) (see {tmp_path / 'fw-health-0.diff.txt'})"
    )


def test_replay_outcome_names_each_reader_that_differs(tmp_path: Path) -> None:
    snap = _snapshot("fw-health", 0, True)
    snap.agree = False
    snap.comparisons[2] = Comparison("cli", "netlink", False, 1, [0x3F])
    outcome = replay_outcome(
        Report(ok=False, snapshots=[_snapshot("cr-space", 0, True), snap]), tmp_path
    )
    assert (
        outcome.detail == "fw-health snapshot 0: cli and netlink differ in 1 byte from offset 0x3f"
    )


def test_replay_outcome_without_snapshots_reports_the_error(tmp_path: Path) -> None:
    outcome = replay_outcome(
        Report(ok=False, errors=["no snapshot after the catas fault"]), tmp_path
    )
    assert (outcome.status, outcome.detail) == (FAIL, "no snapshot after the catas fault")


def test_the_page_shows_the_verdict_each_behaviour_and_links_the_replays(tmp_path: Path) -> None:
    verdict = Verdict.of(kernel("base"), kernel("patched", catas_snapshots=FAIL))
    page = validatehtml.write(tmp_path, verdict)
    words = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dump_dom(page).split("<body", 1)[1]))
    assert "FAIL rig validate" in words
    assert "the patched kernel regressed: catas-snapshots" in words
    assert "catas-snapshots" in words and "FAIL catas-snapshots broke REGRESSED" in words
    html = page.read_text()
    assert "href='base/replay/report.html'" in html and "href='patched/replay/report.html'" in html
    assert not re.search(r"<script|<link|<img|src=|https?://", html)
