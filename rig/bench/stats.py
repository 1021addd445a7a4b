"""`rig bench` results: figures with their samples, goals, the table and the JSON document.

Pure data and formatting (no VM, no clock), so it is unit-tested on its own.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

SCHEMA = "mlx4-rig/bench/1"


@dataclass(frozen=True)
class Spec:
    """What a figure measures: `key` names it in the JSON, `label` in the table."""

    key: str
    label: str
    unit: str  # "s", "ms", "us", "ns", "x" (a ratio), "%" or "MB/s"
    goal: float | None = None  # the figure's median must be <= goal
    goal_min: float | None = None  # ... or >= goal_min (a rate, a ratio to a ceiling)


@dataclass(frozen=True)
class Summary:
    n: int
    median: float
    min: float
    max: float


def summarize(samples: Sequence[float]) -> Summary:
    if not samples:
        raise ValueError("no samples")
    return Summary(len(samples), statistics.median(samples), min(samples), max(samples))


@dataclass
class Figure:
    spec: Spec
    samples: list[float] = field(default_factory=list)
    note: str = ""

    @property
    def summary(self) -> Summary | None:
        return summarize(self.samples) if self.samples else None

    @property
    def met(self) -> bool | None:
        """Whether the median meets the goal; None without a goal or samples."""
        s = self.summary
        if s is None or (self.spec.goal is None and self.spec.goal_min is None):
            return None
        below = self.spec.goal is None or s.median <= self.spec.goal
        above = self.spec.goal_min is None or s.median >= self.spec.goal_min
        return below and above

    @property
    def goal(self) -> dict[str, float] | None:
        """The goal as the JSON gives it: {"max": v}, {"min": v} or both; None without."""
        goal = {
            k: v for k, v in (("max", self.spec.goal), ("min", self.spec.goal_min)) if v is not None
        }
        return goal or None

    def as_dict(self) -> dict[str, Any]:
        s = self.summary
        return {
            "key": self.spec.key,
            "label": self.spec.label,
            "unit": self.spec.unit,
            "n": s.n if s else 0,
            "median": s.median if s else None,
            "min": s.min if s else None,
            "max": s.max if s else None,
            "samples": list(self.samples),
            "goal": self.goal,
            "met": self.met,
            "note": self.note,
        }


class Results:
    """Figures in the order their specs were given; samples are added as runs finish."""

    def __init__(self, specs: Iterable[Spec]) -> None:
        self.figures: dict[str, Figure] = {}
        for spec in specs:
            if spec.key in self.figures:
                raise ValueError(f"duplicate figure {spec.key!r}")
            self.figures[spec.key] = Figure(spec)
        self.errors: list[dict[str, str]] = []

    def add(self, key: str, value: float) -> None:
        self.figures[key].samples.append(float(value))

    def note(self, key: str, text: str) -> None:
        self.figures[key].note = text

    def error(self, section: str, message: str) -> None:
        self.errors.append({"section": section, "error": message})

    def measured(self) -> list[Figure]:
        return [f for f in self.figures.values() if f.samples]

    def missed(self) -> list[Figure]:
        return [f for f in self.figures.values() if f.met is False]


def ratios(numerators: Sequence[float], denominators: Sequence[float]) -> list[float]:
    """Run-by-run ratios (the i-th sample of one figure over the i-th of another)."""
    return [a / b for a, b in zip(numerators, denominators, strict=False) if b]


def fmt(value: float) -> str:
    """Three significant digits or so, never scientific notation."""
    mag = abs(value)
    if mag >= 100:
        return f"{value:.0f}"
    if mag >= 10:
        return f"{value:.1f}"
    if mag >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def _with_unit(value: float, unit: str) -> str:
    if unit == "x":
        return f"{fmt(value)}x"
    if unit == "%":
        return f"{fmt(value)}%"
    return f"{fmt(value)} {unit}"


def format_table(figures: Sequence[Figure]) -> str:
    """A plain-text table: label, median, min, max, runs, goal and whether it is met."""
    header = ("figure", "median", "min", "max", "n", "goal", "")
    rows: list[tuple[str, ...]] = [header]
    for f in figures:
        s = f.summary
        if s is None:
            continue
        unit = f.spec.unit
        goal = " ".join(
            f"{'<=' if k == 'max' else '>='} {_with_unit(v, unit)}"
            for k, v in (f.goal or {}).items()
        )
        verdict = {None: "", True: "ok", False: "MISSED"}[f.met]
        rows.append(
            (
                f.spec.label,
                _with_unit(s.median, unit),
                _with_unit(s.min, unit),
                _with_unit(s.max, unit),
                str(s.n),
                goal,
                verdict,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = []
    for row in rows:
        cells = [row[0].ljust(widths[0])]
        cells += [c.rjust(w) for c, w in zip(row[1:5], widths[1:5], strict=True)]
        cells += [row[5].ljust(widths[5]), row[6]]
        lines.append("  ".join(cells).rstrip())
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def document(
    results: Results, machine: dict[str, Any], options: dict[str, Any], duration: float
) -> dict[str, Any]:
    """The JSON document `rig bench --json` writes (schema mlx4-rig/bench/1)."""
    return {
        "schema": SCHEMA,
        "machine": machine,
        "options": options,
        "duration_s": duration,
        "figures": [f.as_dict() for f in results.measured()],
        "missed_goals": [f.spec.key for f in results.missed()],
        "errors": list(results.errors),
    }


def to_json(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2) + "\n"
