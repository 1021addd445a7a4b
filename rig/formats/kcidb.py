"""KCIDB v5 JSON (KernelCI's results database) of the kernels a validate or matrix run tried.

Per kernel a checkout and a build (the rig builds or fetches it; the checkout is its source
as the rig names it), and per behaviour a test under `mlx4_rig.<behaviour>`. Ids are
`mlx4_rig:<run>:<kernel>[:<behaviour>]`, so two runs never collide. The tests validate the
output with kcidb-io's schema.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rig.jobs.behaviours import BEHAVIOURS, ERROR, FAIL, PASS
from rig.jobs.verdict import KernelResult

ORIGIN = "mlx4_rig"  # KCIDB origins are [a-z0-9_]+
VERSION = {"major": 5, "minor": 0}
STATUS = {PASS: "PASS", FAIL: "FAIL", ERROR: "ERROR"}
ENVIRONMENT = {"comment": "QEMU (TCG) with an emulated Mellanox ConnectX-3 (mlx4-rig)"}


def environment(qemu: str) -> dict[str, Any]:
    """Where the tests ran: the QEMU's version too, once known (the matrix's second axis)."""
    if not qemu:
        return ENVIRONMENT
    return {"comment": f"QEMU {qemu} (TCG) with an emulated Mellanox ConnectX-3 (mlx4-rig)"}


def _slug(text: str) -> str:
    """A path component KCIDB accepts: [a-zA-Z0-9_-]."""
    return re.sub(r"[^a-zA-Z0-9_-]+", "_", text).strip("_") or "kernel"


def kcidb(run: str, kernels: Sequence[tuple[str, KernelResult]]) -> dict[str, Any]:
    """`kernels`: (a name unique in this run, its results) — the role in validate, the
    spec in matrix."""
    summaries = {b.name: b.summary for b in BEHAVIOURS}
    checkouts, builds, tests = [], [], []
    for name, k in kernels:
        base = f"{ORIGIN}:{_slug(run)}:{_slug(name)}"
        checkouts.append(
            {"id": base, "origin": ORIGIN, "valid": bool(k.release), "comment": k.spec}
        )
        builds.append(
            {
                "checkout_id": base,
                "id": base,
                "origin": ORIGIN,
                "architecture": "x86_64",
                "comment": f"{k.release} ({k.origin})" if k.release else k.spec,
                "status": "PASS" if k.release else "ERROR",
                "misc": {
                    "spec": k.spec,
                    "release": k.release,
                    **({"qemu": k.qemu} if k.qemu else {}),
                    **k.build,
                },
            }
        )
        for behaviour, summary in summaries.items():
            o = k.outcome(behaviour)
            test: dict[str, Any] = {
                "build_id": base,
                "id": f"{base}:{behaviour}",
                "origin": ORIGIN,
                "path": f"{ORIGIN}.{behaviour}",
                "comment": summary,
                "status": STATUS[o.status],
                "environment": environment(k.qemu),
                "duration": round(o.seconds, 3),
            }
            if o.detail:
                test["log_excerpt"] = o.detail[:16384]
            if o.observed:
                test["misc"] = {"observed": o.observed}
            tests.append(test)
    return {"version": VERSION, "checkouts": checkouts, "builds": builds, "tests": tests}


def write_kcidb(run: str, kernels: Sequence[tuple[str, KernelResult]], path: Path) -> Path:
    path.write_text(json.dumps(kcidb(run, kernels), indent=2) + "\n")
    return path
