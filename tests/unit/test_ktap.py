"""KTAP v1 of replay and validate results, read back with a parser on kunit_parser's rules."""

from __future__ import annotations

import pytest

from rig.formats.ktap import Group, ktap, replay_group, verdict_groups
from rig.formats.report import Comparison, Report, SnapshotReport
from rig.jobs.behaviours import ERROR, FAIL, NAMES, PASS, Outcome
from rig.jobs.verdict import KernelResult, Verdict
from tests.unit.ktap_parser import KtapError, parse


def kernel(role: str, **statuses: str) -> KernelResult:
    k = KernelResult(role, "deb:bookworm", "6.1.0-rig")
    for name in NAMES:
        status = statuses.get(name.replace("-", "_"), PASS)
        k.outcomes[name] = Outcome(status, "" if status == PASS else f"{name} broke\nline 2")
    return k


def test_validate_nests_behaviours_under_each_kernel() -> None:
    v = Verdict.of(kernel("base"), kernel("patched", regions=FAIL, reload=ERROR))
    root = parse(ktap(verdict_groups(v)))
    assert [t.name for t in root.subtests] == [
        "base 6.1.0-rig",
        "patched 6.1.0-rig",
        "comparison",
    ]
    base, patched, comparison = root.subtests
    assert base.ok and [t.name for t in base.subtests] == list(NAMES)
    assert not patched.ok and not root.ok
    failed = {t.name: t for t in patched.subtests if not t.ok}
    assert sorted(failed) == ["regions", "reload"]
    assert failed["reload"].directive == "ERROR" and failed["regions"].directive == ""
    assert failed["regions"].diagnostics == ["regions: fail: regions broke", "line 2"]
    assert [t.name for t in comparison.subtests if not t.ok] == ["regions", "reload"]


def test_all_pass_is_ok_throughout() -> None:
    root = parse(ktap(verdict_groups(Verdict.of(kernel("base"), kernel("patched")))))
    assert root.ok and all(t.ok for g in root.subtests for t in g.subtests)
    assert sum(len(g.subtests) for g in root.subtests) == 3 * len(NAMES)


def test_names_lose_the_directive_mark() -> None:
    text = ktap([Group("a # b", [("x#y", Outcome(PASS))])])
    assert parse(text).subtests[0].subtests[0].name == "xy"
    assert parse(text).subtests[0].name == "a b"


def _snapshot(region: str, equal: bool, unexplained: bool = False) -> SnapshotReport:
    changed: list[dict[str, object]] = [{"offset": 4, "register": None}] if unexplained else []
    return SnapshotReport(
        region,
        1,
        64,
        "x",
        f"{region}-1.bin",
        equal and not unexplained,
        [Comparison("truth", "cli", equal, 0 if equal else 3)],
        changed,
    )


def test_replay_one_subtest_per_snapshot() -> None:
    report = Report(
        ok=False,
        versions={"kernel": "6.12.0"},
        fault={"kind": "catas"},
        snapshots=[_snapshot("cr-space", False), _snapshot("fw-health", True, unexplained=True)],
        exit_status=1,
    )
    root = parse(ktap([replay_group(report)]))
    (job,) = root.subtests
    assert job.name == "replay catas 6.12.0" and not job.ok
    assert [(t.name, t.ok) for t in job.subtests] == [("cr-space-1", False), ("fw-health-1", False)]
    assert "truth and cli differ in 3 bytes" in job.subtests[0].diagnostics[0]
    assert "no register explains" in job.subtests[1].diagnostics[0]


@pytest.mark.parametrize(("exit_status", "directive"), [(1, ""), (2, "ERROR")])
def test_replay_error_is_a_failure_or_an_error(exit_status: int, directive: str) -> None:
    report = Report(errors=["the guest did not boot"], exit_status=exit_status)
    (job,) = parse(ktap([replay_group(report)])).subtests
    assert [(t.name, t.ok, t.directive) for t in job.subtests] == [("job", False, directive)]


def test_replay_pass() -> None:
    report = Report(ok=True, snapshots=[_snapshot("cr-space", True)], exit_status=0)
    assert parse(ktap([replay_group(report)])).ok


@pytest.mark.parametrize(
    "broken",
    [
        "KTAP version 1\n1..2\nok 1 a\n",  # a result missing
        "KTAP version 1\n1..1\nok 2 a\n",  # out of sequence
        "KTAP version 1\n1..1\n    KTAP version 1\n    # Subtest: a\n    1..0\nok 1 b\n",
        "1..1\nok 1 a\n",  # no version
    ],
)
def test_the_parser_refuses_broken_ktap(broken: str) -> None:
    with pytest.raises(KtapError):
        parse(broken)
