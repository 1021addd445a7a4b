"""A small KTAP v1 reader for the tests, on the rules of the kernel's kunit_parser.py.

A test is a version line, an optional `# Subtest: NAME`, a plan `1..N` and N results
(`ok|not ok NUMBER NAME [# DIRECTIVE]`), numbered from 1, each possibly preceded by a
nested test indented four more spaces; `#` lines elsewhere are diagnostics. Anything else,
a plan the results do not match, or a number out of sequence raises KtapError.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

VERSION = re.compile(r"^KTAP version 1$")
SUBTEST = re.compile(r"^# Subtest: (.+)$")
PLAN = re.compile(r"^1\.\.([0-9]+)$")
RESULT = re.compile(r"^(ok|not ok) ([0-9]+)( - )?([^#]*)( # (.*))?$")


class KtapError(ValueError):
    pass


@dataclass
class Test:
    name: str = ""
    ok: bool = True
    directive: str = ""
    diagnostics: list[str] = field(default_factory=list)
    subtests: list[Test] = field(default_factory=list)


class _Lines:
    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()
        self.i = 0

    def peek(self, indent: int) -> str | None:
        """The next line at this indent (stripped of it), or None at a shallower one."""
        if self.i >= len(self.lines):
            return None
        line = self.lines[self.i]
        if not line.startswith(" " * indent):
            return None
        return line[indent:]

    def take(self, indent: int) -> str:
        line = self.peek(indent)
        if line is None:
            raise KtapError(f"line {self.i + 1}: expected more at indent {indent}")
        self.i += 1
        return line


def _body(lines: _Lines, indent: int, test: Test) -> None:
    """Version, optional subtest name, plan and results of one (sub)test."""
    if not VERSION.match(lines.take(indent)):
        raise KtapError(f"line {lines.i}: no KTAP version line")
    head = lines.peek(indent)
    if head is not None and (m := SUBTEST.match(head)):
        test.name = m.group(1)
        lines.take(indent)
    plan = PLAN.match(lines.take(indent))
    if not plan:
        raise KtapError(f"line {lines.i}: no plan")
    expected = int(plan.group(1))
    while len(test.subtests) < expected:
        line = lines.peek(indent)
        if line is None:
            raise KtapError(f"plan {expected}, {len(test.subtests)} results")
        if line.startswith("    "):
            child = Test()
            _body(lines, indent + 4, child)
            _result(lines, indent, child, len(test.subtests) + 1)
            test.subtests.append(child)
        elif line.startswith("#"):
            lines.take(indent)
            if test.subtests:
                test.subtests[-1].diagnostics.append(line[1:].strip())
        else:
            child = Test()
            _result(lines, indent, child, len(test.subtests) + 1)
            test.subtests.append(child)
    while test.subtests and (line := lines.peek(indent)) is not None and line.startswith("#"):
        lines.take(indent)
        test.subtests[-1].diagnostics.append(line[1:].strip())
    test.ok = all(t.ok or t.directive.startswith("SKIP") for t in test.subtests)


def _result(lines: _Lines, indent: int, test: Test, number: int) -> None:
    while (line := lines.peek(indent)) is not None and line.startswith("#"):
        lines.take(indent)  # the parent's diagnostics between a subtest and its result
    m = RESULT.match(lines.take(indent))
    if not m:
        raise KtapError(f"line {lines.i}: not a test result")
    if int(m.group(2)) != number:
        raise KtapError(f"line {lines.i}: test {m.group(2)}, expected {number}")
    name = m.group(4).strip()
    if test.name and test.name != name:
        raise KtapError(f"line {lines.i}: result {name!r} for subtest {test.name!r}")
    test.name, test.ok, test.directive = name, m.group(1) == "ok", m.group(6) or ""


def parse(text: str) -> Test:
    lines = _Lines(text)
    root = Test()
    _body(lines, 0, root)
    if lines.i != len(lines.lines):
        raise KtapError(f"line {lines.i + 1}: more after the last result")
    return root
