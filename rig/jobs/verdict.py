"""Base against patched: one verdict per behaviour, the side-by-side table, validate.json.

A behaviour REGRESSED when it passes on the base kernel and not on the patched one; FIXED
the other way round; CHANGED when both end the same way but what was observed differs (say,
another snapshot id or region size); SAME otherwise. Only a regression fails `rig validate`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rig.jobs.behaviours import BEHAVIOURS, ERROR, PASS, Outcome

SCHEMA = "mlx4-rig/validate/1"
SAME, CHANGED, REGRESSED, FIXED = "same", "changed", "regressed", "fixed"


def judge(base: Outcome, patched: Outcome) -> str:
    if base.status == PASS and patched.status != PASS:
        return REGRESSED
    if base.status != PASS and patched.status == PASS:
        return FIXED
    if base.status != patched.status or base.observed != patched.observed:
        return CHANGED
    return SAME


@dataclass
class KernelResult:
    role: str  # "base" | "patched"
    spec: str  # as given, e.g. "build:6.1+patches/x" or "default"
    release: str = ""
    origin: str = ""
    build: dict[str, Any] = field(default_factory=dict)  # kbuild's record, if built
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    qemu: str = ""  # the version of the QEMU the replay ran on ("" before it ran)

    def outcome(self, name: str) -> Outcome:
        return self.outcomes.get(name, Outcome(ERROR, "not run"))


@dataclass
class Row:
    behaviour: str
    summary: str
    base: Outcome
    patched: Outcome
    verdict: str


@dataclass
class Verdict:
    base: KernelResult
    patched: KernelResult
    rows: list[Row]
    timings: dict[str, float] = field(default_factory=dict)

    @classmethod
    def of(cls, base: KernelResult, patched: KernelResult) -> Verdict:
        rows = [
            Row(
                b.name,
                b.summary,
                base.outcome(b.name),
                patched.outcome(b.name),
                judge(base.outcome(b.name), patched.outcome(b.name)),
            )
            for b in BEHAVIOURS
        ]
        return cls(base, patched, rows)

    @property
    def regressions(self) -> list[str]:
        return [r.behaviour for r in self.rows if r.verdict == REGRESSED]

    @property
    def ok(self) -> bool:
        return not self.regressions

    def to_json(self) -> str:
        doc = {
            "schema": SCHEMA,
            "ok": self.ok,
            "regressions": self.regressions,
            "kernels": {k.role: _kernel_doc(k) for k in (self.base, self.patched)},
            "behaviours": [
                {
                    "name": r.behaviour,
                    "summary": r.summary,
                    "verdict": r.verdict,
                    "base": asdict(r.base),
                    "patched": asdict(r.patched),
                }
                for r in self.rows
            ],
            "timings": self.timings,
        }
        return json.dumps(doc, indent=2) + "\n"

    def write_json(self, path: Path) -> Path:
        path.write_text(self.to_json())
        return path


def _kernel_doc(k: KernelResult) -> dict[str, Any]:
    return {"spec": k.spec, "release": k.release, "origin": k.origin, "build": k.build}


def _cell(o: Outcome) -> str:
    return o.status.upper() if o.status != PASS else o.status


def table(c: Verdict) -> str:
    """The side-by-side table, with the details of every row that is not simply the same."""
    head = (
        "behaviour",
        f"base ({c.base.release or c.base.spec})",
        f"patched ({c.patched.release or c.patched.spec})",
        "verdict",
    )
    body = [
        (
            r.behaviour,
            _cell(r.base),
            _cell(r.patched),
            r.verdict.upper() if r.verdict != SAME else r.verdict,
        )
        for r in c.rows
    ]
    widths = [max(len(row[i]) for row in (head, *body)) for i in range(4)]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in (head, *body)
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    notes = []
    for r in c.rows:
        if r.verdict == SAME and r.base.status == PASS:
            continue
        for role, o in (("base", r.base), ("patched", r.patched)):
            if o.status != PASS or r.verdict == CHANGED:
                notes.append(f"  {r.behaviour} on {role}: {o.status}: {o.detail}")
                if r.verdict == CHANGED and o.observed:
                    notes.append(f"    observed: {json.dumps(o.observed, sort_keys=True)}")
    if notes:
        lines += ["", "details:", *notes]
    return "\n".join(lines) + "\n"
