"""KCIDB v5 JSON of validate/matrix results, validated offline with kcidb-io's schema."""

from __future__ import annotations

import json
from pathlib import Path

import kcidb_io
import pytest

from rig.formats.kcidb import kcidb, write_kcidb
from rig.jobs.behaviours import ERROR, FAIL, NAMES, PASS, Outcome
from rig.jobs.verdict import KernelResult


def kernel(spec: str, release: str, **statuses: str) -> KernelResult:
    k = KernelResult("matrix", spec, release, "debian linux-image-cloud-amd64")
    for name in NAMES:
        status = statuses.get(name.replace("-", "_"), PASS)
        k.outcomes[name] = Outcome(status, "" if status == PASS else "broke", {"n": 1}, 2.5)
    return k


def test_valid_v5_with_a_test_per_behaviour(tmp_path: Path) -> None:
    kernels = [
        ("deb:bookworm", kernel("deb:bookworm", "6.1.0-41-cloud-amd64")),
        ("deb:trixie", kernel("deb:trixie", "6.12.57+deb13-cloud-amd64", reload=FAIL)),
    ]
    doc = json.loads(write_kcidb("matrix-20261126-1030", kernels, tmp_path / "k.json").read_text())
    kcidb_io.schema.V5_0.validate_exactly(doc)
    kcidb_io.schema.LATEST.validate(doc)  # a v5.0 document is still valid for today's schema
    assert [c["id"] for c in doc["checkouts"]] == [
        "mlx4_rig:matrix-20261126-1030:deb_bookworm",
        "mlx4_rig:matrix-20261126-1030:deb_trixie",
    ]
    assert len(doc["tests"]) == 2 * len(NAMES)
    failed = [t for t in doc["tests"] if t["status"] != "PASS"]
    assert [(t["build_id"], t["path"]) for t in failed] == [
        ("mlx4_rig:matrix-20261126-1030:deb_trixie", "mlx4_rig.reload")
    ]
    assert failed[0]["log_excerpt"] == "broke"


def test_a_kernel_that_never_came_up() -> None:
    k = KernelResult("matrix", "deb:sid")  # no release: provisioning failed
    k.outcomes["probe"] = Outcome(ERROR, "no such package")
    doc = kcidb("run", [("deb:sid", k)])
    kcidb_io.schema.V5_0.validate_exactly(doc)
    assert doc["builds"][0]["status"] == "ERROR" and not doc["checkouts"][0]["valid"]
    assert {t["status"] for t in doc["tests"]} == {"ERROR"}  # a missing outcome is an error


def test_the_schema_check_is_real() -> None:
    doc = kcidb("run", [("k", kernel("k", "6.1"))])
    doc["tests"][0]["status"] = "pass"
    with pytest.raises(Exception, match="pass"):
        kcidb_io.schema.V5_0.validate_exactly(doc)
