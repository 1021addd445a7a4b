"""JUnit XML of a `rig validate` or `rig matrix` run, for CI test reports.

Three suites: one per kernel (a testcase per behaviour: <failure> when it failed, <error>
when it could not be run), and "comparison" (a testcase per behaviour, failing when the
patched kernel regressed it).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

from rig.jobs.behaviours import BEHAVIOURS, ERROR, FAIL
from rig.jobs.verdict import REGRESSED, KernelResult, Verdict


def _suite(parent: ET.Element, name: str, cases: list[ET.Element]) -> None:
    failures = sum(1 for c in cases if c.find("failure") is not None)
    errors = sum(1 for c in cases if c.find("error") is not None)
    seconds = sum(float(c.get("time", "0")) for c in cases)
    suite = ET.SubElement(
        parent,
        "testsuite",
        name=name,
        tests=str(len(cases)),
        failures=str(failures),
        errors=str(errors),
        skipped="0",
        time=f"{seconds:.3f}",
    )
    suite.extend(cases)


def _kernel_cases(k: KernelResult, names: list[str], classname: str) -> list[ET.Element]:
    cases = []
    for name in names:
        o = k.outcome(name)
        case = ET.Element("testcase", classname=classname, name=name, time=f"{o.seconds:.3f}")
        if o.status == FAIL:
            ET.SubElement(case, "failure", message=o.detail[:500]).text = o.detail
        elif o.status == ERROR:
            ET.SubElement(case, "error", message=o.detail[:500]).text = o.detail
        cases.append(case)
    return cases


def junit_xml(c: Verdict) -> str:
    root = ET.Element("testsuites", name="rig validate")
    names = [r.behaviour for r in c.rows]
    for k in (c.base, c.patched):
        cases = _kernel_cases(k, names, f"validate.{k.role}")
        _suite(root, f"{k.role} {k.release or k.spec}", cases)
    cases = []
    for r in c.rows:
        case = ET.Element(
            "testcase", classname="validate.comparison", name=r.behaviour, time="0.000"
        )
        if r.verdict == REGRESSED:
            text = (
                f"passes on the base kernel, {r.patched.status} on the patched one: "
                f"{r.patched.detail}"
            )
            ET.SubElement(case, "failure", message=text[:500]).text = text
        else:
            out = f"{r.verdict}: base {r.base.status}, patched {r.patched.status}"
            ET.SubElement(case, "system-out").text = out
        cases.append(case)
    _suite(root, "comparison", cases)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def kernels_junit_xml(name: str, kernels: Sequence[tuple[str, KernelResult]]) -> str:
    """One suite per (cell name, kernel), a testcase per behaviour (`rig matrix`)."""
    root = ET.Element("testsuites", name=name)
    names = [b.name for b in BEHAVIOURS]
    for cell, k in kernels:
        classname = f"matrix.{cell}".replace(" ", "_")
        _suite(root, f"{cell} {k.release}".strip(), _kernel_cases(k, names, classname))
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def write_junit(c: Verdict, path: Path) -> Path:
    path.write_text(junit_xml(c))
    return path
