"""`rig validate` end to end with the shipped example patches: the broken crdump is reported
as a regression (exit 1), the comment-only patch as no change (exit 0), and the base kernel
is built once.

A cold CI run builds the guest kernel from Debian's linux-source-6.1 first. Measured on a
2-core machine (make -j2 under nice -n 19; tinyconfig + guest/rig.config): the base
build took 330 s on a quiet machine and 696 s with other VMs running; each patched build
after it about 12 s (crdump.c and the modules' link only); each `rig validate` about 1 min
45 s of VM time (four boots). This module took 9 min 30 s cold (the build included) and
3 min 10 s with the kernels cached. Marked `kbuild` (and `slow`) so that a CI run with a
tight budget can deselect it: -m "e2e and not kbuild".
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from rig.cli import main
from rig.provision.kbuild import ensure_build
from rig.provision.kbuildspec import DEFAULT_SERIES, BuildSpec, DebianSource

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.kbuild]

PATCHES = Path(__file__).resolve().parents[2] / "guest" / "patches"
UNCHANGED = ("probe", "regions", "recovery", "snapshot-delete", "reload", "kernel-log")


def validate(patches: str, out: Path) -> tuple[int, dict[str, Any], dict[str, str]]:
    status = main(["validate", "--patches", str(PATCHES / patches), "--out", str(out)])
    doc = json.loads((out / "validate.json").read_text())
    verdicts = {b["name"]: b["verdict"] for b in doc["behaviours"]}
    return status, doc, verdicts


def test_broken_crdump_is_a_regression(tmp_path: Path) -> None:
    status, doc, verdicts = validate("example-break-crdump", tmp_path / "run")
    assert status == 1
    # fw-health is read one dword late: its snapshots no longer equal the device truth.
    assert verdicts["catas-snapshots"] == "regressed"
    assert verdicts["second-fault"] == "regressed"
    assert {name: verdicts[name] for name in UNCHANGED} == dict.fromkeys(UNCHANGED, "same")
    behaviours = {b["name"]: b for b in doc["behaviours"]}
    assert "fw-health snapshot" in behaviours["catas-snapshots"]["patched"]["detail"]
    assert "cr-space" not in behaviours["second-fault"]["patched"]["detail"]
    suites = {
        s.get("name", ""): s for s in ET.parse(tmp_path / "run" / "junit.xml").iter("testsuite")
    }
    assert suites["comparison"].get("failures") == "2"


def test_comment_only_patch_changes_nothing(tmp_path: Path) -> None:
    # Built (or found) beforehand, so that validate must find it in the cache.
    ensure_build(BuildSpec(DebianSource(DEFAULT_SERIES)))
    status, doc, verdicts = validate("example-noop", tmp_path / "run")
    assert status == 0
    assert set(verdicts.values()) == {"same"}, verdicts
    assert doc["kernels"]["base"]["build"]["cached"] is True
