"""`rig matrix`: the validate behaviours on several kernels, one kernel x behaviour table."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from functools import partial
from pathlib import Path

from rig.commands.options import Subparsers, positive_int
from rig.jobs.cluster import run_cells
from rig.jobs.matrix import (
    RIG_QEMU,
    MatrixOptions,
    QemuChoice,
    parse_kernels,
    parse_qemus,
    run_matrix,
    table,
)
from rig.provision.suites import RELEASES

logger = logging.getLogger(__name__)

CI_FORMATS = ("github", "gitlab")


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser(
        "matrix",
        help="run the validate behaviours on several kernels and print one table",
        description="For each kernel: provision it, run `rig replay` (catas fault, "
        "snapshots against the device truth over CLI and netlink) and one session (probe, "
        "regions, recovery, a second fault, snapshot delete, reload, kernel log), then "
        "print a kernel x behaviour table. Writes matrix.json, junit.xml, matrix.ktap "
        "(KTAP v1), kcidb.json (KCIDB v5) and report.html into the run directory. Exit "
        "status: 0 every behaviour passed on every kernel, 1 some behaviour failed, 2 the rig "
        "could not run a cell (named on stderr).",
    )
    p.add_argument(
        "--kernels",
        metavar="SPEC,...",
        required=True,
        help="comma-separated kernel specs (see `rig setup --help`), e.g. "
        "deb:bookworm,deb:trixie,deb:sid,build:6.1",
    )
    p.add_argument(
        "--patches",
        metavar="PATH",
        type=Path,
        help="a patch series applied to every build: kernel of --kernels",
    )
    p.add_argument(
        "--userspace",
        metavar="RELEASE",
        choices=RELEASES,
        help="one Debian root fs for every kernel (default: each kernel's own)",
    )
    p.add_argument(
        "--qemu",
        metavar="QEMU,...",
        help="the QEMU axis: comma-separated QEMUs, each a version of Debian's qemu source "
        "(built once into the cache, as --qemu-version elsewhere; e.g. 10.2.2,11.1.3) or a "
        "qemu-system-x86_64 PATH (with a '/'); every kernel runs on each (default: the "
        "rig's own QEMU)",
    )
    p.add_argument(
        "--out", metavar="DIR", type=Path, help="run directory (default: runs/matrix-<time>)"
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--dask",
        metavar="SCHEDULER",
        help="run the cells on this Dask scheduler (e.g. tcp://host:8786); its workers cap "
        "their VMs with `--resources vm=N` and need the rig and its cache (default: a "
        "local cluster sized by cores and memory)",
    )
    where.add_argument(
        "--workers",
        metavar="N",
        type=positive_int,
        help="the local cluster's worker processes, one VM each (default: one per core "
        "and per 2 GiB of memory, at most one per cell)",
    )
    where.add_argument(
        "--serial", action="store_true", help="no Dask: run the cells one after the other"
    )
    p.add_argument(
        "--list",
        action="store_true",
        help="print the cells as a CI matrix (--format) and run nothing",
    )
    p.add_argument(
        "--format",
        dest="ci_format",
        choices=CI_FORMATS,
        default="github",
        help="with --list: github (a JSON `include` list for strategy.matrix) or gitlab "
        "(a parallel:matrix entry)",
    )
    p.set_defaults(func=cmd_matrix)


def ci_matrix(
    kernels: tuple[str, ...], ci_format: str, qemus: tuple[QemuChoice, ...] = (RIG_QEMU,)
) -> str:
    """The cells as a CI system's job matrix: each job runs `rig matrix --kernels $KERNEL`
    (and `--qemu $QEMU` when the matrix has a QEMU axis)."""
    axis = [q.label for q in qemus if q.label]
    cells = [{"kernel": k, "qemu": q} for k in kernels for q in axis] or [
        {"kernel": k} for k in kernels
    ]
    if ci_format == "github":
        return json.dumps({"include": cells}) + "\n"
    # GitLab's parallel:matrix; JSON strings are valid YAML scalars.
    entries = "".join(
        "    - "
        + "\n      ".join(f"{name.upper()}: {json.dumps(value)}" for name, value in c.items())
        + "\n"
        for c in cells
    )
    return f"parallel:\n  matrix:\n{entries}"


def cmd_matrix(args: argparse.Namespace) -> int:
    kernels = parse_kernels(args.kernels, args.patches)
    qemus = parse_qemus(args.qemu)
    if args.list:
        print(ci_matrix(kernels, args.ci_format, qemus), end="")
        return 0
    # Absolute: a worker process need not share this one's working directory.
    out = (args.out or Path("runs") / time.strftime("matrix-%Y%m%d-%H%M%S")).resolve()
    opts = MatrixOptions(
        kernels=kernels,
        out=out,
        patches=args.patches.resolve() if args.patches else None,
        userspace=args.userspace,
        qemus=qemus,
    )
    if args.serial:
        matrix = run_matrix(opts)
    else:
        matrix = run_matrix(opts, partial(run_cells, scheduler=args.dask, workers=args.workers))
    print(table(matrix), end="")
    logger.info(f"results: {out}/matrix.json, junit.xml, matrix.ktap, kcidb.json, report.html")
    for cell in matrix.rig_failures:
        print(f"rig: error: {cell.name}: the rig could not run it: {cell.error}", file=sys.stderr)
    print({0: "PASS", 1: "FAIL"}.get(matrix.exit_status, "ERROR"))
    return matrix.exit_status
