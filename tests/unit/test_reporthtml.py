"""report.html rendered by Debian's headless Chromium (no VM): a passing and a failing replay's
page, built from synthetic runs through the real map, timeline and report code."""

from __future__ import annotations

import os
import re
from pathlib import Path

from cx3 import layout
from rig import builtin
from rig.formats import crmap, reporthtml
from rig.formats.crmap import Pair
from rig.formats.report import ReaderReport, Report, SnapshotReport
from rig.timeline import Mark
from tests.browser import read_png, render, screenshot

GREEN, RED = (0x8F, 0xD1, 0x9E), (0xD9, 0x36, 0x3E)  # reporthtml.COLORS: equal, unexplained
CELL_PIXELS = 34 * 34  # a map cell; the legend's swatch of each colour is far smaller


def run(tmp_path: Path, tamper: int | None) -> Path:
    """A run directory with report.html, as rig.jobs.replay writes it."""
    given = builtin.crspace_image()
    capture = bytearray(given)
    capture[layout.CATAS_OFFSET : layout.CATAS_OFFSET + 4] = bytes.fromhex("0fffffff")
    if tamper is not None:
        capture[tamper] ^= 0xFF
    pairs = [Pair("input vs device capture", "input", "capture", given, bytes(capture), True)]
    cells = crmap.crspace_map(pairs, [(0, layout.SIZE)], layout.SIZE)
    marks = [
        Mark(0.0, "fault injected: words in the internal-error (catas) buffer", "device"),
        Mark(1.7, "the driver detects the internal error", "kernel"),
        Mark(2.3, "REGION_NEW cr-space snapshot 0 on the host", "host"),
        Mark(7.1, "eth1 up again with carrier", "guest"),
    ]
    ok = tamper is None
    report = Report(
        ok=ok,
        exit_status=0 if ok else 1,
        versions={"rig": "0.1.0", "qemu": "10.2.2", "kernel": "6.1.0-56-cloud-amd64"},
        fault={"kind": "catas", "catas_words": ["0x0fffffff"], "catas_printed": ["0x0fffffff"]},
        readers=[
            ReaderReport("devlink CLI", "after the fault", "the capture", True, layout.SIZE),
            ReaderReport(
                "mstregdump",
                "live before the fault",
                "the device's BAR0",
                ok,
                142288,
                first_unexplained=[] if ok else [0x40002],
                problem="" if ok else "read what the device did not hold at 0x40002",
            ),
        ],
        snapshots=[
            SnapshotReport("cr-space", 0, layout.SIZE, "00", "cr-space-0.bin", ok),
        ],
        timeline=[m.as_dict() for m in marks],
        crspace_map=crmap.summary(cells),
    )
    out = tmp_path / ("pass" if ok else "fail")
    out.mkdir()
    drawn = reporthtml.Drawn(cells, bytes(capture), builtin.health_buffer(), os.urandom(64))
    return reporthtml.write(out, report, drawn)


def text_of(dom: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom))


def test_a_passing_run_renders_its_verdict_timeline_and_map(tmp_path: Path) -> None:
    page = run(tmp_path, tamper=None)
    dom = render(page, tmp_path / "pass.png", 1200, 2200)
    words = text_of(dom)
    assert re.search(r"id=\"verdict\".*PASS", dom)
    assert "Timeline of the fault" in words and "eth1 up again with carrier" in words
    assert "Map of CR-space" in words and len(re.findall(r"<rect ", dom)) == 256
    assert "buf[00] 0x0fffffff 0x0fffffff 0x0fffffff" in words  # injected, captured, printed
    assert "firmware internal error" in words  # the health buffer's syndrome, decoded
    # Self-contained: nothing is fetched, nothing runs.
    html = page.read_text()
    assert not re.search(r"<script|<link|<img|src=|@import|url\(", html)
    assert re.findall(r"https?://[^'\" ]+", html) == ["http://www.w3.org/2000/svg"] * 2

    png = read_png(tmp_path / "pass.png")
    assert png.variance() > 500  # a drawn page, not a blank one
    assert png.count(GREEN) > 200 * CELL_PIXELS and png.count(RED) < CELL_PIXELS / 2


def test_a_failing_run_shows_the_unexplained_offset(tmp_path: Path) -> None:
    page = run(tmp_path, tamper=0x12345)
    dom = render(page, tmp_path / "fail.png", 1200, 2200)
    words = text_of(dom)
    assert re.search(r"id=\"verdict\".*FAIL", dom)
    assert "0x00012345 +1 byte, UNEXPLAINED" in words
    assert 'href="#cell-0x12000"' in dom and 'id="cell-0x12000"' in dom
    assert "capture 00012340" in words  # its hexdump diff, at its address
    assert "unexplained at 0x40002" in words  # the failing reader, named with its offset
    png = read_png(tmp_path / "fail.png")
    assert png.count(RED) > CELL_PIXELS  # its cell on the map


def test_a_blank_page_is_told_apart(tmp_path: Path) -> None:
    page = tmp_path / "blank.html"
    page.write_text("<!DOCTYPE html><html><body></body></html>")
    assert read_png(screenshot(page, tmp_path / "blank.png", 400, 300)).variance() < 1
