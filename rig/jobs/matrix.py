"""`rig matrix`: the validate behaviours on each of several kernels, one table.

A cell is one kernel on one QEMU: the kernel provisioned (fetched or built), then the same
two boots as each of `rig validate`'s kernels (rig.jobs.validate.run_kernel). QEMU is the
second axis: by default one, the rig's (its pinned build); `--qemu` names several, each a
version of Debian's qemu source (built once into the cache) or a binary. Cells run one after
the other or on Dask (rig.jobs.cluster); a cell the rig could not run (a kernel that cannot be
had, a rig failure during the replay) is recorded with its error and the others still run.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rig.errors import RigError, UsageError
from rig.formats import matrixhtml, reporthtml
from rig.formats.junit import kernels_junit_xml
from rig.formats.kcidb import write_kcidb
from rig.formats.ktap import Group, write_ktap
from rig.jobs.behaviours import BEHAVIOURS, ERROR, PASS, Outcome
from rig.jobs.validate import prepare, run_kernel
from rig.jobs.verdict import KernelResult
from rig.provision.kbuildspec import BuildSpec, is_build_spec, parse_build_spec
from rig.provision.qemu import check_requested

logger = logging.getLogger(__name__)

SCHEMA = "mlx4-rig/matrix/1"


@dataclass(frozen=True)
class QemuChoice:
    """One entry of the QEMU axis: a binary, a Debian qemu version, or neither (the rig's)."""

    path: Path | None = None
    version: str | None = None  # as given: "10.2.2", "1:11.1.3+ds-1"

    @property
    def label(self) -> str:
        """How the cell names it: "" for the rig's own QEMU."""
        return str(self.path) if self.path is not None else self.version or ""


RIG_QEMU = QemuChoice()


@dataclass(frozen=True)
class MatrixOptions:
    kernels: tuple[str, ...]
    out: Path
    patches: Path | None = None  # applied to every build: kernel
    userspace: str | None = None  # None: each kernel's own (see rig.provision.guest)
    qemus: tuple[QemuChoice, ...] = (RIG_QEMU,)

    def cells(self) -> list[tuple[str, QemuChoice]]:
        """kernel x QEMU, kernel-major: a kernel's cells sit side by side in the table."""
        return [(k, q) for k in self.kernels for q in self.qemus]


@dataclass
class Cell:
    kernel: str  # the spec as given
    result: KernelResult
    error: str = ""  # why the rig could not run this cell; "" when it ran
    seconds: float = 0.0
    host: str = ""  # where it ran: host name and process id
    versions: dict[str, str] = field(default_factory=dict)  # its replay's: rig, QEMU, kernel
    qemu: str = ""  # the QEMU asked for (QemuChoice.label); "" the rig's own

    @property
    def name(self) -> str:
        """The cell's name in every output: its kernel, and its QEMU when one was asked for."""
        return cell_name(self.kernel, self.qemu)

    def could_not_run(self, error: str) -> Cell:
        """The rig failed this cell: every behaviour it did not judge says why."""
        self.error = error
        for b in BEHAVIOURS:
            self.result.outcomes.setdefault(b.name, Outcome(ERROR, f"not run: {error}"))
        return self

    @property
    def passed(self) -> bool:
        return not self.error and all(
            self.result.outcome(b.name).status == PASS for b in BEHAVIOURS
        )


@dataclass
class Matrix:
    cells: list[Cell]
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def rig_failures(self) -> list[Cell]:
        return [c for c in self.cells if c.error]

    @property
    def exit_status(self) -> int:
        """0 every behaviour passed everywhere, 2 the rig could not run a cell, else 1."""
        if self.rig_failures:
            return 2
        return 0 if all(c.passed for c in self.cells) else 1

    def ktap_groups(self) -> list[Group]:
        return [
            Group(
                f"{c.name} {c.result.release}".strip(),
                [(b.name, c.result.outcome(b.name)) for b in BEHAVIOURS],
            )
            for c in self.cells
        ]

    def to_json(self) -> str:
        doc: dict[str, Any] = {
            "schema": SCHEMA,
            "exit_status": self.exit_status,
            "behaviours": [{"name": b.name, "summary": b.summary} for b in BEHAVIOURS],
            "cells": [
                {
                    "kernel": c.kernel,
                    "qemu": c.qemu,
                    "qemu_version": c.result.qemu,
                    "release": c.result.release,
                    "origin": c.result.origin,
                    "build": c.result.build,
                    "error": c.error,
                    "seconds": round(c.seconds, 1),
                    "host": c.host,
                    "versions": c.versions,
                    "outcomes": {b.name: asdict(c.result.outcome(b.name)) for b in BEHAVIOURS},
                }
                for c in self.cells
            ],
            "timings": self.timings,
        }
        return json.dumps(doc, indent=2) + "\n"


def cell_name(kernel: str, qemu: str) -> str:
    return f"{kernel} qemu={qemu}" if qemu else kernel


def cell_dir(name: str) -> str:
    """A run-directory name for a cell's name."""
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", name).strip("_") or "kernel"


def kernel_spec(text: str, patches: Path | None) -> BuildSpec | str:
    if is_build_spec(text):
        spec = parse_build_spec(text)
        return BuildSpec(spec.source, patches or spec.patches)
    return text


def parse_kernels(text: str, patches: Path | None) -> tuple[str, ...]:
    kernels = tuple(k.strip() for k in text.split(",") if k.strip())
    if not kernels:
        raise UsageError("--kernels: no kernel given (e.g. deb:bookworm,deb:trixie)")
    if len(set(kernels)) != len(kernels):
        raise UsageError(f"--kernels: a kernel is named twice: {text}")
    if patches is not None and not any(is_build_spec(k) for k in kernels):
        raise UsageError("--patches applies to build: kernels, and --kernels names none")
    return kernels


def parse_qemus(text: str | None) -> tuple[QemuChoice, ...]:
    """--qemu: comma-separated binaries (a path: has a "/") or Debian qemu versions."""
    if text is None:
        return (RIG_QEMU,)
    entries = [e.strip() for e in text.split(",") if e.strip()]
    if not entries:
        raise UsageError("--qemu: no QEMU given (e.g. 10.2.2,11.1.3 or /path/to/qemu)")
    if len(set(entries)) != len(entries):
        raise UsageError(f"--qemu: a QEMU is named twice: {text}")
    choices = []
    for e in entries:
        if "/" in e:
            choices.append(QemuChoice(path=Path(e).expanduser().resolve()))
        else:
            check_requested(e, "--qemu")  # one line, exit 2, before anything is provisioned
            choices.append(QemuChoice(version=e))
    return tuple(choices)


def run_cell(kernel: str, opts: MatrixOptions, qemu: QemuChoice = RIG_QEMU) -> Cell:
    t0 = time.monotonic()
    name = cell_name(kernel, qemu.label)
    cell = Cell(
        kernel,
        KernelResult(name, kernel),
        host=f"{socket.gethostname()}:{os.getpid()}",
        qemu=qemu.label,
    )
    try:
        argument, cell.result = prepare(name, kernel_spec(kernel, opts.patches), opts.userspace)
    except RigError as e:
        cell.could_not_run(str(e).splitlines()[0])
    else:
        report = run_kernel(
            argument,
            cell.result,
            opts.out / cell_dir(name),
            opts.userspace,
            qemu.path,
            qemu.version,
        )
        cell.versions = dict(report.versions)
        if report.exit_status == 2 and report.errors:
            cell.could_not_run(report.errors[0].splitlines()[0])
    cell.seconds = time.monotonic() - t0
    logger.info(f"{name}: {'rig error: ' + cell.error if cell.error else 'done'}")
    return cell


def serial_cells(opts: MatrixOptions) -> list[Cell]:
    return [run_cell(k, opts, q) for k, q in opts.cells()]


def run_matrix(
    opts: MatrixOptions, cells: Callable[[MatrixOptions], list[Cell]] = serial_cells
) -> Matrix:
    """Every cell (by `cells`: here one after the other, or rig.jobs.cluster.run_cells);
    matrix.json, junit.xml, matrix.ktap, kcidb.json and report.html in the run directory."""
    t0 = time.monotonic()
    opts.out.mkdir(parents=True, exist_ok=True)
    matrix = Matrix(cells(opts))
    matrix.timings["total"] = round(time.monotonic() - t0, 1)
    write_outputs(matrix, opts.out)
    return matrix


def write_outputs(matrix: Matrix, out: Path) -> None:
    (out / "matrix.json").write_text(matrix.to_json())
    named = [(c.name, c.result) for c in matrix.cells]
    (out / "junit.xml").write_text(kernels_junit_xml("rig matrix", named))
    write_ktap(matrix.ktap_groups(), out / "matrix.ktap")
    write_kcidb(out.name, named, out / "kcidb.json")
    matrixhtml.write(out, matrix, replay_pages(matrix, out))


def replay_pages(matrix: Matrix, out: Path) -> dict[str, str]:
    """Each cell's replay report.html that exists, relative to the run directory, by cell name."""
    pages = {c.name: f"{cell_dir(c.name)}/replay/{reporthtml.NAME}" for c in matrix.cells}
    return {k: p for k, p in pages.items() if (out / p).is_file()}


def _cell(cell: Cell, behaviour: str) -> str:
    status = cell.result.outcome(behaviour).status
    return status if status == PASS else status.upper()


def table(matrix: Matrix) -> str:
    """Behaviours down, kernels across (and under each its QEMU, when --qemu named any); the
    details of everything that did not pass below."""
    head = ("behaviour", *(c.kernel for c in matrix.cells))
    releases = ("", *(c.result.release or "-" for c in matrix.cells))
    # The version that ran (the binary's own), else the one asked for.
    qemus = ("qemu", *(c.result.qemu or c.qemu or "-" for c in matrix.cells))
    body = [(b.name, *(_cell(c, b.name) for c in matrix.cells)) for b in BEHAVIOURS]
    axis = [qemus] if any(c.qemu for c in matrix.cells) else []
    rows = [head, releases, *axis, *body]
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    lines.insert(2 + len(axis), "  ".join("-" * w for w in widths))
    notes = [f"  {c.name}: the rig could not run it: {c.error}" for c in matrix.rig_failures]
    for c in matrix.cells:
        for b in BEHAVIOURS:
            o = c.result.outcome(b.name)
            if o.status != PASS and not c.error:
                notes.append(f"  {b.name} on {c.name}: {o.status}: {o.detail}")
    if notes:
        lines += ["", "details:", *notes]
    return "\n".join(lines) + "\n"
