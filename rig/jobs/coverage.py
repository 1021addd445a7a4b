"""Kernel line and branch coverage of a run on the coverage kernel: gcovr (the host's gcov,
which matches the compiler that built the kernel) over every VM's saved counters, merged.

    <out>/html/index.html   gcovr's pages, the sources with their counts
    <out>/gcovr.json        gcovr's merged data (`gcovr --add-tracefile` takes it)
    <out>/coverage.json     per file, lines and branches hit/total; per function for the
                            crdump, catas, reset and devlink region functions (FOCUS)
"""

from __future__ import annotations

import importlib.util
import json
import logging
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rig.errors import ProvisionError, RigError
from rig.gcov import counter_dirs
from rig.provision.kcoverage import CoverageBuild

logger = logging.getLogger(__name__)

HTML = "html/index.html"
GCOVR_JSON = "gcovr.json"
COVERAGE_JSON = "coverage.json"
GCOV = "gcov"  # the host's: the same gcc built the kernel (the build's cache key names it)


def focus(file: str, function: str) -> bool:
    """The functions coverage.json lists one by one: all of crdump.c, catas.c and reset.c,
    and devlink's region functions."""
    name = Path(file).name
    if file.startswith("drivers/net/ethernet/mellanox/mlx4/"):
        return name in ("crdump.c", "catas.c", "reset.c")
    return "region" in function


@dataclass(frozen=True)
class Figures:
    lines_hit: int
    lines: int
    branches_hit: int
    branches: int

    @staticmethod
    def percent(hit: int, total: int) -> str:
        return f"{100.0 * hit / total:5.1f}%" if total else "    -"

    def cells(self) -> str:
        return (
            f"{self.lines_hit:>5}/{self.lines:<5} {self.percent(self.lines_hit, self.lines)}  "
            f"{self.branches_hit:>5}/{self.branches:<5} "
            f"{self.percent(self.branches_hit, self.branches)}"
        )


@dataclass(frozen=True)
class FunctionFigures:
    file: str
    name: str
    line: int
    calls: int
    figures: Figures


@dataclass(frozen=True)
class Report:
    files: dict[str, Figures]
    functions: list[FunctionFigures]  # the FOCUS functions
    runs: int  # VMs whose counters were merged

    @property
    def total(self) -> Figures:
        f = self.files.values()
        return Figures(
            sum(x.lines_hit for x in f),
            sum(x.lines for x in f),
            sum(x.branches_hit for x in f),
            sum(x.branches for x in f),
        )

    def function(self, name: str) -> FunctionFigures | None:
        return next((f for f in self.functions if f.name == name), None)

    def as_dict(self) -> dict[str, Any]:
        return {
            "runs": self.runs,
            "total": asdict(self.total),
            "files": {name: asdict(f) for name, f in sorted(self.files.items())},
            "functions": [
                {"file": f.file, "function": f.name, "line": f.line, "calls": f.calls}
                | asdict(f.figures)
                for f in self.functions
            ],
        }

    def table(self) -> str:
        head = f"{'file':<48} {'lines hit/total':>19}  {'branches hit/total':>19}"
        rows = [head, "-" * len(head)]
        rows += [f"{name:<48} {f.cells()}" for name, f in sorted(self.files.items())]
        rows += ["-" * len(head), f"{'TOTAL':<48} {self.total.cells()}", ""]
        fhead = f"{'function (crdump, catas, reset, region)':<40} {'calls':>7} " + head[49:]
        rows += [fhead, "-" * len(fhead)]
        rows += [
            f"{f.name[:40]:<40} {f.calls:>7} {f.figures.cells()}"
            for f in sorted(self.functions, key=lambda f: (f.file, f.line))
        ]
        return "\n".join(rows)


def gcovr_available() -> bool:
    return importlib.util.find_spec("gcovr") is not None


def build_report(build: CoverageBuild, runs_root: Path, out: Path, log: Path) -> Report:
    """Merge every VM's counters found under `runs_root` and write the report into `out`."""
    runs = counter_dirs(runs_root)
    if not runs:
        raise RigError(
            f"no VM saved gcov counters under {runs_root}: did any boot the coverage kernel?"
        )
    if not gcovr_available():
        raise ProvisionError("gcovr is not installed: pip install 'mlx4-rig[coverage]'")
    # gcov wants each .gcda beside its .gcno: one directory per VM, the notes copied in.
    work = out / "work"
    shutil.rmtree(work, ignore_errors=True)
    for i, run in enumerate(runs):
        d = work / f"{i:04d}"
        shutil.copytree(build.notes, d)
        shutil.copytree(run, d, dirs_exist_ok=True)
    root = source_root(build, work / "src")
    (out / HTML).parent.mkdir(parents=True, exist_ok=True)
    filters = ["--filter=" + re.escape(p) + ("$" if p.endswith(".c") else "/") for p in build.paths]
    command = [
        sys.executable,
        "-m",
        "gcovr",
        f"--root={root}",
        f"--gcov-executable={GCOV}",
        *filters,
        # Headers' inline code (include/...) has no source here; it is filtered out anyway.
        "--gcov-ignore-errors=no_working_dir_found",
        f"--json={out / GCOVR_JSON}",
        f"--html-details={out / HTML}",
        "--html-title=mlx4-rig: kernel coverage",
        str(work),
    ]
    with log.open("a") as f:
        f.write("$ " + " ".join(command) + "\n")
        f.flush()
        done = subprocess.run(command, cwd=root, stdout=f, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        raise RigError(f"gcovr failed (exit {done.returncode})", log)
    shutil.rmtree(work, ignore_errors=True)
    report = read_gcovr(json.loads((out / GCOVR_JSON).read_text()), len(runs))
    (out / COVERAGE_JSON).write_text(json.dumps(report.as_dict(), indent=2) + "\n")
    return report


def source_root(build: CoverageBuild, root: Path) -> Path:
    """The profiled sources, plus an empty stand-in for every other file the notes name (the
    headers' inline code): gcovr drops a .gcda whose files it cannot all find, and the
    filters leave those out of the report anyway."""
    shutil.copytree(build.sources, root)
    for note in build.notes.rglob("*.gcno"):
        listed = subprocess.run(
            [GCOV, "--json-format", "--stdout", "--object-directory", str(note.parent), str(note)],
            cwd=root,
            capture_output=True,
            check=False,
        )
        try:
            names = [str(f["file"]) for f in json.loads(listed.stdout)["files"]]
        except (ValueError, KeyError):
            continue  # gcov could not read it: gcovr will say so
        for name in names:
            path = root / name
            if not Path(name).is_absolute() and ".." not in Path(name).parts and not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                path.touch()
    return root


def read_gcovr(data: dict[str, Any], runs: int) -> Report:
    """Figures from gcovr's JSON: per file, and per FOCUS function (its lines, and the
    branches on them)."""
    files: dict[str, Figures] = {}
    functions: list[FunctionFigures] = []
    for entry in data["files"]:
        name = str(entry["file"])
        lines = [ln for ln in entry["lines"] if not ln.get("gcovr/excluded")]
        files[name] = _figures(lines)
        by_function: dict[str, list[dict[str, Any]]] = {}
        for ln in lines:
            by_function.setdefault(str(ln.get("function_name", "")), []).append(ln)
        for fn in entry["functions"]:
            fname = str(fn["name"])
            if focus(name, fname):
                functions.append(
                    FunctionFigures(
                        name,
                        fname,
                        int(fn["lineno"]),
                        int(fn["execution_count"]),
                        _figures(by_function.get(fname, [])),
                    )
                )
    return Report(files, functions, runs)


def _figures(lines: Iterable[dict[str, Any]]) -> Figures:
    lines = list(lines)
    branches = [b for ln in lines for b in ln.get("branches", [])]
    return Figures(
        sum(1 for ln in lines if ln["count"] > 0),
        len(lines),
        sum(1 for b in branches if b["count"] > 0),
        len(branches),
    )
