"""report.html of `rig matrix`, beside matrix.json: the verdict, the versions (QEMU, each
kernel), the behaviour x kernel table with each cell's verdict, and links to each kernel's
replay page (its own report.html). Self-contained like rig.formats.reporthtml, whose page and
tables it uses; written whatever the cells' outcome, a cell the rig could not run included."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from rig.formats.reporthtml import NAME, escape, page, table
from rig.jobs.behaviours import BEHAVIOURS, PASS

if TYPE_CHECKING:  # rig.jobs.matrix writes this page: a runtime import would be circular
    from rig.jobs.matrix import Cell, Matrix

VERDICTS = {0: "PASS", 1: "FAIL"}  # anything else: ERROR, as the matrix's exit status
COLORS = {"pass": "#8fd19e", "fail": "#d9363e", "error": "#f4c542"}  # a table cell's fill


def render(matrix: Matrix, pages: Mapping[str, str]) -> str:
    """The page; `pages` maps a cell's name to its replay page, relative to the run
    directory (a cell that got no page has none)."""
    v = VERDICTS.get(matrix.exit_status, "ERROR")
    what = {
        "PASS": "every behaviour passed on every kernel",
        "FAIL": "a behaviour failed (exit 1)",
        "ERROR": "the rig could not run a cell (exit 2)",
    }[v]
    body = [
        f"<h1 id='verdict'><span class='verdict {v}'>{v}</span>rig matrix</h1>",
        f"<p>{escape(what)}; {len(matrix.cells)} kernel(s), "
        f"total {matrix.timings.get('total', 0.0):.1f} s.</p>",
    ]
    if matrix.rig_failures:
        items = "".join(
            f"<li>{escape(c.name)}: the rig could not run it: {escape(c.error)}</li>"
            for c in matrix.rig_failures
        )
        body.append(f"<ul class='errors'>{items}</ul>")
    body += [
        "<h2 id='versions'>Versions</h2>",
        _versions(matrix, pages),
        "<h2 id='behaviours'>Behaviours</h2>",
        _behaviours(matrix, pages),
        _details(matrix),
        "<p><a href='matrix.json'>matrix.json</a> <a href='junit.xml'>junit.xml</a> "
        "<a href='matrix.ktap'>matrix.ktap</a> <a href='kcidb.json'>kcidb.json</a></p>",
    ]
    return page(f"rig matrix: {v}", "\n".join(body))


def write(out: Path, matrix: Matrix, pages: Mapping[str, str]) -> Path:
    path = out / NAME
    path.write_text(render(matrix, pages))
    return path


def _versions(matrix: Matrix, pages: Mapping[str, str]) -> str:
    rows = [
        (
            f"<b>{escape(c.name)}</b>",
            escape(c.result.release) or "<span class='muted'>not provisioned</span>",
            escape(c.result.origin),
            escape(c.versions.get("qemu", "")) or "<span class='muted'>not started</span>",
            escape(c.host),
            f"{c.seconds:.1f} s",
            _link(pages.get(c.name), "report.html"),
        )
        for c in matrix.cells
    ]
    head = ("kernel", "release", "from", "QEMU", "ran on", "took", "replay")
    return table(head, rows)


def _behaviours(matrix: Matrix, pages: Mapping[str, str]) -> str:
    head = ("behaviour", *(escape(c.name) for c in matrix.cells))
    rows = [
        (
            f"<b>{escape(b.name)}</b><br><span class='muted'>{escape(b.summary)}</span>",
            *(_cell(c, b.name, pages.get(c.name)) for c in matrix.cells),
        )
        for b in BEHAVIOURS
    ]
    return table(head, rows)


def _cell(cell: Cell, behaviour: str, replay_page: str | None) -> str:
    o = cell.result.outcome(behaviour)
    word = o.status if o.status == PASS else o.status.upper()
    colour = COLORS.get(o.status, COLORS["error"])
    # The catas-snapshots behaviour is the replay: its page has the readers, timeline, map.
    link = f"<br>{_link(replay_page, 'replay')}" if behaviour == "catas-snapshots" else ""
    return (
        f"<div style='background:{colour};padding:6px 10px;font-weight:700'>"
        f"{escape(word)}</div>{link}"
    )


def _details(matrix: Matrix) -> str:
    items = [
        f"<li><b>{escape(b.name)}</b> on {escape(c.name)}: {escape(o.status)}: "
        f"{escape(o.detail)}</li>"
        for c in matrix.cells
        if not c.error
        for b in BEHAVIOURS
        if (o := c.result.outcome(b.name)).status != PASS
    ]
    if not items:
        return ""
    return f"<h2 id='details'>What did not pass</h2><ul class='errors'>{''.join(items)}</ul>"


def _link(href: str | None, text: str) -> str:
    if href is None:
        return "<span class='muted'>no page</span>"
    return f"<a href='{escape(href)}'>{escape(text)}</a>"
