"""report.html: a replay's report.json made readable, beside it in the run directory.

One self-contained page (inline CSS and SVG, no script, nothing fetched): the verdict and the
versions; every reader of CR-space; the fault's timeline on one clock (rig.timeline); a map of
CR-space in 4 KiB cells (rig.formats.crmap), each non-equal cell linked to its hexdump diffs
with the registers named; the catas words and the health buffer decoded. Written on a failure
too, with whatever the run got to.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cx3 import layout as cr
from rig.formats import crmap, health
from rig.formats.compare import hexdump_diff
from rig.formats.crmap import Cell, Finding
from rig.formats.report import ReaderReport, Report

NAME = "report.html"
VERDICTS = {0: "PASS", 1: "FAIL"}  # anything else: ERROR (the rig or its input failed)
COLORS = {
    crmap.EQUAL: "#8fd19e",
    crmap.EXPLAINED: "#f4c542",
    crmap.UNEXPLAINED: "#d9363e",
    crmap.NOT_COVERED: "#d5d8dc",
}
WITNESS_COLORS = {"device": "#7b3fa0", "kernel": "#1f6fb2", "host": "#2e8b57", "guest": "#c26d00"}
DIFF_LINES = 24  # per comparison and cell

CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px auto; max-width: 1100px;
  color: #1d1f21; padding: 0 16px; }
h1 { font-size: 26px; margin: 0 0 4px; } h2 { margin-top: 32px; border-bottom: 1px solid #ccc; }
.verdict { display: inline-block; padding: 4px 14px; border-radius: 6px; color: #fff;
  font-weight: 700; margin-right: 10px; }
.PASS { background: #2e8b57; } .FAIL { background: #d9363e; } .ERROR { background: #8a6d00; }
table { border-collapse: collapse; margin: 8px 0; }
td, th { border: 1px solid #d0d0d0; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f2f2f2; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.ok { color: #1e7b45; font-weight: 600; } .bad { color: #c0262d; font-weight: 600; }
.errors li { color: #c0262d; } code, pre { font: 12px/1.35 ui-monospace, monospace; }
pre { background: #f7f7f7; border: 1px solid #e1e1e1; padding: 8px; overflow-x: auto; }
.legend span { display: inline-block; width: 14px; height: 14px; vertical-align: -2px;
  margin: 0 4px 0 12px; border: 1px solid #999; }
.cell { border-left: 4px solid #999; padding-left: 12px; margin: 18px 0; }
.muted { color: #666; }
"""


@dataclass(frozen=True)
class Drawn:
    """What the page draws beyond report.json."""

    cells: Sequence[Cell] = ()  # the CR-space map; empty when no comparison was made
    capture: bytes | None = None  # the device's BAR0 at the crdump
    health: bytes | None = None  # its health buffer then
    input_health: bytes | None = None  # the health buffer loaded into the device


def write(out: Path, report: Report, drawn: Drawn) -> Path:
    path = out / NAME
    path.write_text(render(report, drawn))
    return path


def verdict(report: Report) -> str:
    return VERDICTS.get(report.exit_status, "ERROR")


def render(report: Report, drawn: Drawn) -> str:
    parts = [
        _head(report),
        _readers(report.readers),
        _snapshots(report),
        _timeline(report.timeline),
        _map(drawn.cells),
        _catas(report, drawn.capture),
        _health(drawn.health, drawn.input_health),
        _rest(report),
    ]
    return page(f"rig replay: {verdict(report)}", "\n".join(parts))


def page(title: str, body: str) -> str:
    """A whole self-contained page around `body` (already HTML)."""
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{escape(title)}</title><style>{CSS}</style></head><body>\n{body}\n</body></html>\n"
    )


def escape(value: object) -> str:
    return html.escape(str(value), quote=True)


def table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A table of already-escaped cells; no header row when `head` is empty."""
    th = f"<tr>{''.join(f'<th>{h}</th>' for h in head)}</tr>" if head else ""
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table>{th}{body}</table>"


def _head(report: Report) -> str:
    v = verdict(report)
    what = {
        "PASS": "every snapshot and every reader agrees with the device",
        "FAIL": "the kernel under test failed (exit 1)",
        "ERROR": "the rig or its input failed (exit 2)",
    }[v]
    versions = table((), [(escape(k), escape(val)) for k, val in report.versions.items()])
    fault = ", ".join(
        f"{escape(k)}: {escape(val)}" for k, val in report.fault.items() if k == "kind"
    )
    out = [
        f"<h1 id='verdict'><span class='verdict {v}'>{v}</span>rig replay</h1>",
        f"<p>{escape(what)}; fault {fault or 'not injected'}; "
        f"total {report.timings.get('total', 0.0):.1f} s.</p>",
    ]
    if report.errors:
        items = "".join(f"<li>{escape(e)}</li>" for e in report.errors)
        out.append(f"<ul class='errors'>{items}</ul>")
    problems = [f"{r.name}: {r.problem}" for r in report.readers if not r.ok]
    for s in report.snapshots:
        for c in s.changed_from_input:
            if not c["register"]:
                problems.append(
                    f"{s.region}: the device's capture differs from the input at "
                    f"{int(str(c['offset'])):#x} ({c['length']} bytes), unexplained"
                )
    if problems:
        items = "".join(f"<li>{escape(p)}</li>" for p in problems)
        out.append(f"<ul class='errors'>{items}</ul>")
    out.append("<h2>Versions</h2>" + versions)
    return "\n".join(out)


def _readers(readers: Sequence[ReaderReport]) -> str:
    rows = []
    for r in readers:
        result = "<span class='ok'>agrees</span>" if r.ok else "<span class='bad'>DIFFERS</span>"
        if r.problem:
            result += f"<br>{escape(r.problem)}"
        if r.first_unexplained:
            offsets = ", ".join(f"{o:#x}" for o in r.first_unexplained)
            result += f"<br>unexplained at <code>{escape(offsets)}</code>"
        names = ", ".join(dict.fromkeys(str(c["register"]) for c in r.explained))
        rows.append(
            (
                f"<b>{escape(r.name)}</b>",
                escape(r.reads),
                escape(r.against),
                f"<span class='num'>{r.compared_bytes:,}</span>",
                result,
                escape(names) or "<span class='muted'>none</span>",
            )
        )
    head = ("reader", "reads", "compared with", "bytes", "result", "live registers moved")
    body = table(head, rows) if rows else "<p class='muted'>no reader got to read.</p>"
    return f"<h2 id='readers'>Readers of CR-space</h2>{body}"


def _snapshots(report: Report) -> str:
    rows = []
    for s in report.snapshots:
        agree = "<span class='ok'>agree</span>" if s.agree else "<span class='bad'>DIFFER</span>"
        regs = ", ".join(
            dict.fromkeys(
                str(c["register"]) if c["register"] else f"UNEXPLAINED at {c['offset']:#x}"
                for c in s.changed_from_input
            )
        )
        files = " ".join(
            f"<a href='{escape(f)}'>{escape(f)}</a>"
            for f in (s.path, s.mstdump_path, s.diff_path)
            if f
        )
        cov = ""
        if s.coverage:
            c = s.coverage
            cov = (
                f"{c['covered_dwords']:,} of {c['region_dwords']:,} dwords from the input: "
                f"{c['equal']:,} equal, {c['explained']:,} explained, "
                f"{c['unexplained']:,} unexplained"
            )
        rows.append(
            (
                escape(s.region),
                str(s.id),
                f"{s.size:,}",
                agree,
                escape(regs) or "<span class='muted'>nothing</span>",
                escape(cov),
                files,
            )
        )
    head = ("region", "id", "bytes", "CLI / netlink / truth", "changed from the input", "input")
    body = table((*head, "files"), rows) if rows else "<p class='muted'>no snapshot was read.</p>"
    return f"<h2 id='snapshots'>Snapshots</h2>{body}"


def _timeline(marks: Sequence[dict[str, Any]]) -> str:
    title = "<h2 id='timeline'>Timeline of the fault</h2>"
    if not marks:
        return title + "<p class='muted'>no fault was taken.</p>"
    ts = [float(m["t"]) for m in marks]
    lo, hi = min(0.0, *ts), max(ts)
    span = (hi - lo) or 1.0
    left, width, row = 70, 480, 20
    height = 40 + row * len(marks)

    def x(t: float) -> float:
        return left + width * (t - lo) / span

    svg = [
        f"<svg xmlns='http://www.w3.org/2000/svg' width='1060' height='{height}' "
        "role='img' aria-label='timeline'>"
    ]
    step = _tick(span)
    tick = step * int(lo / step)
    while tick <= hi + 1e-9:
        svg.append(
            f"<line x1='{x(tick):.1f}' y1='18' x2='{x(tick):.1f}' y2='{height - 4}' "
            "stroke='#e4e4e4'/>"
            f"<text x='{x(tick):.1f}' y='12' font-size='11' text-anchor='middle' "
            f"fill='#666'>{tick:+.3g} s</text>"
        )
        tick += step
    for i, m in enumerate(marks):
        y = 34 + row * i
        color = WITNESS_COLORS.get(str(m["witness"]), "#444")
        t = float(m["t"])
        svg.append(
            f"<line x1='{x(lo):.1f}' y1='{y}' x2='{x(t):.1f}' y2='{y}' stroke='{color}' "
            "stroke-opacity='0.25'/>"
            f"<circle cx='{x(t):.1f}' cy='{y}' r='5' fill='{color}'/>"
            f"<text x='{left + width + 12}' y='{y + 4}' font-size='12'>"
            f"<tspan font-weight='600'>{t:+8.3f} s</tspan> {escape(m['what'])} "
            f"<tspan fill='{color}'>({escape(m['witness'])})</tspan></text>"
        )
    svg.append("</svg>")
    legend = " ".join(
        f"<span style='color:{c}'>&#9679; {escape(w)}</span>" for w, c in WITNESS_COLORS.items()
    )
    note = (
        "<p class='muted'>Seconds from the injection, on the host's clock: the device's "
        "event log, the kernel's printk times aligned through the serial console, the host's "
        f"own observations and the guest's init. Witnesses: {legend}</p>"
    )
    return title + note + "".join(svg)


def _tick(span: float) -> float:
    for step in (0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120):
        if span / step <= 12:
            return float(step)
    return 300.0


def _map(cells: Sequence[Cell]) -> str:
    title = "<h2 id='crspace-map'>Map of CR-space (256 cells of 4 KiB)</h2>"
    if not cells:
        return title + "<p class='muted'>no comparison of CR-space was made.</p>"
    size, gap, top, left = 34, 3, 22, 70
    svg = [
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{left + 16 * (size + gap)}' "
        f"height='{top + 16 * (size + gap)}' role='img' aria-label='CR-space map'>"
    ]
    for col in range(16):
        svg.append(
            f"<text x='{left + col * (size + gap) + size / 2}' y='14' font-size='10' "
            f"text-anchor='middle' fill='#666'>+{col:x}000</text>"
        )
    for cell in cells:
        r, c = divmod(cell.index, 16)
        if c == 0:
            svg.append(
                f"<text x='{left - 6}' y='{top + r * (size + gap) + size / 2 + 4}' "
                f"font-size='11' text-anchor='end' fill='#666'>{cell.offset:#07x}</text>"
            )
        label = f"{cell.offset:#07x}-{cell.offset + crmap.CELL - 1:#07x}: {cell.status}"
        if cell.registers():
            label += f" ({', '.join(cell.registers())})"
        rect = (
            f"<rect x='{left + c * (size + gap)}' y='{top + r * (size + gap)}' width='{size}' "
            f"height='{size}' rx='3' fill='{COLORS[cell.status]}'><title>{escape(label)}</title>"
            "</rect>"
        )
        if cell.findings:
            rect = f"<a href='#cell-{cell.offset:#07x}'>{rect}</a>"
        svg.append(rect)
    svg.append("</svg>")
    counts = {s: sum(c.status == s for c in cells) for s in crmap.STATUSES}
    legend = "".join(
        f"<span style='background:{COLORS[s]}'></span>{escape(s)}: {counts[s]}"
        for s in crmap.STATUSES
    )
    details = [_cell_details(c) for c in cells if c.findings]
    return (
        title
        + f"<p class='legend'>{legend}</p>"
        + "<p class='muted'>A cell is unexplained when any comparison differs there with no "
        "register to account for it, explained when registers account for every difference. "
        "Click a coloured cell for its differences.</p>" + "".join(svg) + "".join(details)
    )


def _cell_details(cell: Cell) -> str:
    end = cell.offset + crmap.CELL
    out = [
        f"<div class='cell' id='cell-{cell.offset:#07x}' "
        f"style='border-color:{COLORS[cell.status]}'>"
        f"<h3>{cell.offset:#07x}-{end - 1:#07x}: {escape(cell.status)}</h3><ul>"
    ]
    for f in cell.findings:
        ch = f.change
        verdict = "explained" if f.explained else "UNEXPLAINED"
        out.append(
            f"<li>{escape(f.pair.label)}: <code>{ch.offset:#010x}</code> +{_bytes(ch.length)}, "
            f"<b>{verdict}</b>: {escape(_why(f))}</li>"
        )
    out.append("</ul>")
    for pair in dict.fromkeys(f.pair for f in cell.findings):
        diff = hexdump_diff(
            pair.a_data[cell.offset : end],
            pair.b_data[cell.offset : end],
            (pair.a, pair.b),
            max_lines=DIFF_LINES,
            base=cell.offset,
        )
        out.append(f"<p>{escape(pair.label)}:</p><pre>{escape(diff)}</pre>")
    out.append("</div>")
    return "".join(out)


def _bytes(n: int) -> str:
    return f"{n} byte" if n == 1 else f"{n} bytes"


def _why(f: Finding) -> str:
    reg = cr.register_at(f.change.offset)
    if reg is None:
        return "no register here: the bytes must be equal"
    if f.explained:
        return f"{reg.name}: {reg.why}"
    return f"in the {reg.name}, where nothing may differ between these two"


def _catas(report: Report, capture: bytes | None) -> str:
    title = "<h2 id='catas'>Catas (internal-error) words</h2>"
    injected = [int(w, 16) for w in report.fault.get("catas_words", [])]
    printed = [int(w, 16) for w in report.fault.get("catas_printed", [])]
    seen = []
    if capture is not None:
        base = cr.CATAS_OFFSET
        seen = [int.from_bytes(capture[base + 4 * i : base + 4 * i + 4], "big") for i in range(16)]
    if not (injected or printed or seen):
        return title + "<p class='muted'>no catas words were injected or seen.</p>"
    rows = []
    for i in range(cr.CATAS_DWORDS):
        cols = [_word(ws, i) for ws in (injected, seen, printed)]
        if any(c not in ("", "0x00000000") for c in cols):
            rows.append((f"buf[{i:02x}]", *(f"<code>{c}</code>" for c in cols)))
    note = (
        f"<p class='muted'>The buffer at BAR0 {cr.CATAS_OFFSET:#x} ({cr.CATAS_DWORDS} dwords); "
        "a non-zero first word is what the driver's 5 s catas poll looks for, and it prints "
        "every word as <code>buf[NN]</code> when it finds one. Rows all zero are left out.</p>"
    )
    head = ("word", "injected", "in the device's capture", "printed by the driver")
    return title + note + table(head, rows)


def _word(words: Sequence[int], i: int) -> str:
    return f"0x{words[i]:08x}" if i < len(words) else ""


def _health(captured: bytes | None, loaded: bytes | None) -> str:
    title = "<h2 id='health'>Health buffer</h2>"
    data = captured if captured is not None else loaded
    if data is None:
        return title + "<p class='muted'>no health buffer.</p>"
    rows = []
    for d in health.decode(data):
        f = d.field
        raw = data[f.offset : f.offset + f.size].hex(" ", 4 if f.size >= 4 else 1)
        same = ""
        if captured is not None and loaded is not None:
            a, b = captured[f.offset : f.offset + f.size], loaded[f.offset : f.offset + f.size]
            same = (
                "<span class='ok'>as loaded</span>"
                if a == b
                else "<span class='bad'>changed</span>"
            )
        rows.append(
            (
                f"<code>{f.offset:#04x}</code>",
                escape(f.name),
                "" if f.name == "reserved" else f"<code>{d.value:#0{2 + 2 * f.size}x}</code>",
                escape(d.meaning),
                f"<code>{escape(raw)}</code>",
                same,
            )
        )
    which = "the device's capture at the crdump" if captured is not None else "as loaded"
    note = (
        f"<p class='muted'>{escape(which)}; fields as Mellanox firmware of that generation lays "
        "them out for mlx5 (mlx4 does not decode the buffer): an assumption, the raw bytes "
        "are beside.</p>"
    )
    head = ("offset", "field", "value", "meaning", "bytes", "vs the input")
    return title + note + table(head, rows)


def _rest(report: Report) -> str:
    out = []
    if report.netdevs:
        rows = [
            (
                when,
                escape(n["name"]),
                escape(n["mac"]),
                escape(n["operstate"]),
                "carrier" if n["carrier"] else "no carrier",
            )
            for when in ("before", "after")
            for n in report.netdevs.get(when, [])
        ]
        out.append("<h2 id='netdevs'>Netdevs</h2>" + table(("", "name", "MAC", "state", ""), rows))
    if report.traffic:
        t = report.traffic
        status = "<span class='ok'>ok</span>" if t.get("ok") else "<span class='bad'>FAILED</span>"
        out.append(
            f"<h2 id='traffic'>Traffic across the fault</h2><p>{status} "
            f"{escape(t.get('problem', ''))}; sent {t['sent']['bytes']:,} bytes, received "
            f"{t['received']['bytes']:,}; hashes "
            f"{'match' if t.get('sha256_match') else 'DIFFER'}.</p>"
        )
    timings = [(escape(k), f"{v:.3f} s") for k, v in report.timings.items()]
    out.append("<h2 id='timings'>Timings</h2>" + table(("phase", "seconds"), timings))
    inputs = [(escape(k), escape(v)) for k, v in report.inputs.items()]
    out.append("<h2 id='inputs'>Inputs</h2>" + table((), inputs))
    links = " ".join(f"<a href='{escape(a)}'>{escape(a)}</a>" for a in report.artifacts)
    out.append(f"<h2 id='artifacts'>Files</h2><p><a href='report.json'>report.json</a> {links}</p>")
    return "\n".join(out)
