"""Headless Chromium (Debian's `chromium`) for the tests of report.html: render a page to PNG,
dump its DOM, and count the PNG's pixels by colour (Pillow) to tell a drawn page from a
blank one. No network: the page is a local file."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import PIL.Image

CHROMIUM = "chromium"
# As root, in a container: no sandbox, no GPU; no first-run or crash-reporter side trips.
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run")
TIMEOUT = 120.0


def chromium() -> str:
    path = shutil.which(CHROMIUM)
    if path is None:
        raise AssertionError(f"{CHROMIUM} not found: apt-get install chromium (as .ci/run does)")
    return path


def _run(*args: str) -> str:
    """Chromium on `args` (FLAGS first); its stdout."""
    res = subprocess.run(
        [chromium(), *FLAGS, *args],
        check=True,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    return res.stdout


def screenshot(page: Path, png: Path, width: int = 1200, height: int = 3000) -> Path:
    _run(f"--window-size={width},{height}", f"--screenshot={png}", page.resolve().as_uri())
    return png


def render(page: Path, png: Path, width: int = 1200, height: int = 3000) -> str:
    """The page's DOM (dump_dom) and its screenshot at `png` (screenshot) from one Chromium
    start: each start costs ~1 s of CPU, a suite's worth of them a few seconds."""
    size = f"--window-size={width},{height}"
    return _run(size, f"--screenshot={png}", "--dump-dom", page.resolve().as_uri())


def dump_dom(page: Path) -> str:
    """The page's DOM as Chromium built it (what a reader sees, markup included)."""
    return _run("--dump-dom", page.resolve().as_uri())


@dataclass(frozen=True)
class Image:
    width: int
    height: int
    colours: dict[tuple[int, int, int], int]  # every RGB colour in the image, and its pixels

    def variance(self) -> float:
        """The variance of the pixels' brightness (the mean of each one's channels)."""
        n = self.width * self.height
        grey = [((r + g + b) // 3, k) for (r, g, b), k in self.colours.items()]
        mean = sum(v * k for v, k in grey) / n
        return sum(k * (v - mean) ** 2 for v, k in grey) / n

    def count(self, colour: tuple[int, int, int]) -> int:
        """How many pixels are exactly this colour."""
        return self.colours.get(colour, 0)


def read_png(path: Path) -> Image:
    """The PNG's pixels, by colour (Pillow decodes; a Python decoder took ~1.3 s of CPU for
    a 1200x2400 screenshot, the colour counts another ~1.2 s)."""
    with PIL.Image.open(path) as png:
        assert png.format == "PNG", f"{path} is not a PNG"
        rgb = png.convert("RGB")
    counted = rgb.getcolors(rgb.width * rgb.height)
    assert counted is not None
    colours: dict[tuple[int, int, int], int] = {}
    for k, c in counted:
        assert isinstance(c, tuple)
        colours[(c[0], c[1], c[2])] = k
    return Image(rgb.width, rgb.height, colours)
