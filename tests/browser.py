"""Headless Chromium (Debian's `chromium`) for the tests of report.html: render a page to PNG,
dump its DOM, and read the PNG's pixels back (8-bit RGB/RGBA, as Chromium writes them) to
tell a drawn page from a blank one. No network: the page is a local file."""

from __future__ import annotations

import shutil
import statistics
import struct
import subprocess
import zlib
from dataclasses import dataclass
from pathlib import Path

CHROMIUM = "chromium"
# As root, in a container: no sandbox, no GPU; no first-run or crash-reporter side trips.
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run")
TIMEOUT = 120.0


def chromium() -> str:
    path = shutil.which(CHROMIUM)
    if path is None:
        raise AssertionError(f"{CHROMIUM} not found: apt-get install chromium (as .ci/run does)")
    return path


def screenshot(page: Path, png: Path, width: int = 1200, height: int = 3000) -> Path:
    subprocess.run(
        [
            chromium(),
            *FLAGS,
            f"--window-size={width},{height}",
            f"--screenshot={png}",
            page.resolve().as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=TIMEOUT,
    )
    return png


def dump_dom(page: Path) -> str:
    """The page's DOM as Chromium built it (what a reader sees, markup included)."""
    res = subprocess.run(
        [chromium(), *FLAGS, "--dump-dom", page.resolve().as_uri()],
        check=True,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    return res.stdout


@dataclass(frozen=True)
class Image:
    width: int
    height: int
    channels: int
    rows: list[bytes]  # unfiltered scanlines

    def grey(self) -> list[int]:
        """Every pixel's brightness (the mean of its colour channels)."""
        out = []
        for row in self.rows:
            for x in range(0, len(row), self.channels):
                r, g, b = row[x], row[x + 1], row[x + 2]
                out.append((r + g + b) // 3)
        return out

    def variance(self) -> float:
        return statistics.pvariance(self.grey())

    def count(self, colour: tuple[int, int, int]) -> int:
        """How many pixels are exactly this colour."""
        pixel = bytes(colour)
        n = self.channels
        return sum(1 for row in self.rows for x in range(0, len(row), n) if row[x : x + 3] == pixel)


def read_png(path: Path) -> Image:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    pos, idat, header = 8, b"", b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and colour in (2, 6) and not interlace, (depth, colour, interlace)
    channels = 3 if colour == 2 else 4
    raw = zlib.decompress(idat)
    stride = width * channels
    rows: list[bytes] = []
    prev = bytearray(stride)
    for y in range(height):
        kind = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - channels] if i >= channels else 0
            b = prev[i]
            c = prev[i - channels] if i >= channels else 0
            if kind == 1:
                line[i] = (line[i] + a) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + b) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else b if pb <= pc else c
                line[i] = (line[i] + pred) & 0xFF
        rows.append(bytes(line))
        prev = line
    return Image(width, height, channels, rows)
