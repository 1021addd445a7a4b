"""KTAP v1 (docs.kernel.org/dev-tools/ktap.html) of a replay, validate or matrix run.

One test per group (a kernel, or the replay job), its behaviours as nested subtests. A
behaviour that could not be run is `not ok ... # ERROR`: KTAP's directive for a test that
failed to run, which parsers that know only SKIP (kunit_parser) still count as a failure.
Details go on `#` diagnostic lines after the result, one line each.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rig.formats.report import Report
from rig.jobs.behaviours import ERROR, FAIL, PASS, Outcome
from rig.jobs.verdict import REGRESSED, Verdict

INDENT = "    "


@dataclass(frozen=True)
class Group:
    """A test with subtests: a kernel and its behaviours, or a job and its checks."""

    name: str
    cases: Sequence[tuple[str, Outcome]] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        return bool(self.cases) and all(o.status == PASS for _, o in self.cases)


def _name(text: str) -> str:
    # A KTAP test name ends at the first '#' (the directive) and at the end of the line.
    return re.sub(r"\s+", " ", text.replace("#", "")).strip() or "unnamed"


def _diagnostics(text: str, indent: str) -> list[str]:
    return [f"{indent}# {line.rstrip()}" for line in text.splitlines() if line.strip()]


def _result(number: int, name: str, o: Outcome, indent: str) -> list[str]:
    head = "ok" if o.status == PASS else "not ok"
    directive = " # ERROR" if o.status == ERROR else ""
    lines = [f"{indent}{head} {number} {_name(name)}{directive}"]
    if o.status != PASS:
        lines += _diagnostics(f"{name}: {o.status}: {o.detail}", indent)
    return lines


def ktap(groups: Sequence[Group]) -> str:
    lines = ["KTAP version 1", f"1..{len(groups)}"]
    for number, group in enumerate(groups, 1):
        lines += [f"{INDENT}KTAP version 1", f"{INDENT}# Subtest: {_name(group.name)}"]
        lines.append(f"{INDENT}1..{len(group.cases)}")
        for sub, (name, outcome) in enumerate(group.cases, 1):
            lines += _result(sub, name, outcome, INDENT)
        failed = sum(1 for _, o in group.cases if o.status != PASS)
        lines.append(f"# {_name(group.name)}: {len(group.cases) - failed} pass, {failed} not")
        lines.append(f"{'ok' if group.ok else 'not ok'} {number} {_name(group.name)}")
    return "\n".join(lines) + "\n"


def write_ktap(groups: Sequence[Group], path: Path) -> Path:
    path.write_text(ktap(groups))
    return path


def replay_group(report: Report) -> Group:
    """`rig replay`: one subtest per snapshot; the rig's or the kernel's error as its own."""
    cases: list[tuple[str, Outcome]] = []
    for s in report.snapshots:
        unexplained = [c for c in s.changed_from_input if not c.get("register")]
        problems = [
            f"{c.a} and {c.b} differ in {c.differing_bytes} bytes"
            for c in s.comparisons
            if not c.equal
        ]
        if unexplained:
            problems.append(f"{len(unexplained)} change(s) from the input no register explains")
        status = FAIL if problems else PASS
        cases.append((f"{s.region}-{s.id}", Outcome(status, "; ".join(problems))))
    if report.errors:
        status = FAIL if report.exit_status == 1 else ERROR
        cases.append(("job", Outcome(status, "\n".join(report.errors))))
    elif not report.snapshots:
        cases.append(("job", Outcome(FAIL, "no snapshot")))
    kernel = report.versions.get("kernel", "")
    fault = report.fault.get("kind", "")
    return Group(f"replay {fault} {kernel}".strip(), cases)


def verdict_groups(v: Verdict) -> list[Group]:
    """`rig validate`: each kernel's behaviours, then the comparison (fails on a regression)."""
    names = [r.behaviour for r in v.rows]
    groups = [
        Group(f"{k.role} {k.release or k.spec}", [(n, k.outcome(n)) for n in names])
        for k in (v.base, v.patched)
    ]
    comparison = [
        (
            r.behaviour,
            Outcome(FAIL, f"passes on the base kernel, {r.patched.status} on the patched one")
            if r.verdict == REGRESSED
            else Outcome(PASS),
        )
        for r in v.rows
    ]
    return [*groups, Group("comparison", comparison)]
