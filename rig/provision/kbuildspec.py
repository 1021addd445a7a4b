"""`build:` kernel specs: build the guest kernel from source, optionally with patches.

    build:6.1                  Debian's linux-source-6.1, the newest version any suite offers
    build:6.12=6.12.118-1      that version of it (build:7.2: sid's newest series)
    build:trixie               the newest linux-source-* of that suite (bookworm, trixie, sid,
                               *-backports), its newest version
    build:/path/to/linux       a kernel tree of your own (copied; never modified)
    build:SOURCE+PATCHES       SOURCE with a patch series applied (see patchseries.py):
                               a directory of *.patch, a quilt series, an mbox, one patch

Debian's sources come through the rig's private apt of each suite (rig.provision.debs), never
the host's. Everything after the first "+" is the series path, so a pinned version or a tree
path must not contain "+". Relative paths are taken from the current directory; a suite's name
wins over a directory of that name (write ./trixie for the directory).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path

from rig.errors import ProvisionError
from rig.provision import suites

PREFIX = "build:"
DEFAULT_SERIES = "6.1"
_SERIES = re.compile(r"^(\d+\.\d+)(?:=(\S+))?$")


@dataclass(frozen=True)
class DebianSource:
    """Debian's linux-source-<series> package: the packaged kernel's own source."""

    series: str | None  # "6.1"; None: the newest series `suite` offers
    version: str | None = None  # None: apt's candidate
    suite: str = suites.ALL  # whose private apt index answers

    @property
    def package(self) -> str:
        if self.series is None:
            raise ProvisionError(f"linux-source of {self.suite}: series not resolved yet")
        return f"linux-source-{self.series}"

    def describe(self) -> str:
        if self.series is None:
            return self.suite
        return self.series + (f"={self.version}" if self.version else "")


@dataclass(frozen=True)
class TreeSource:
    """A kernel source tree the user points at."""

    path: Path

    def describe(self) -> str:
        return str(self.path)


Source = DebianSource | TreeSource


@dataclass(frozen=True)
class BuildSpec:
    source: Source
    patches: Path | None = None
    fragments: tuple[Path, ...] = ()  # merged after guest/rig.config, in order
    coverage: bool = False  # gcov counters in mlx4 and devlink (rig.provision.kcoverage)

    def unpatched(self) -> BuildSpec:
        return replace(self, patches=None)

    def describe(self) -> str:
        """The spec as a `--kernel` argument (extra fragments have no spelling there)."""
        text = PREFIX + self.source.describe()
        return text + (f"+{self.patches}" if self.patches is not None else "")


def is_build_spec(text: str | None) -> bool:
    return text is not None and text.startswith(PREFIX)


def parse_source(text: str, cwd: Path | None = None) -> Source:
    """ "6.1", "6.1=<version>", a Debian suite or a directory."""
    if m := _SERIES.match(text):
        return DebianSource(m.group(1), m.group(2))
    if not text:
        return DebianSource(DEFAULT_SERIES)
    if text in suites.SUITES:
        return DebianSource(None, None, text)
    path = (cwd or Path.cwd()) / Path(text).expanduser()
    if not path.is_dir():
        raise ProvisionError(
            f"kernel source {text!r}: neither a Debian series such as "
            f"{DEFAULT_SERIES} (or {DEFAULT_SERIES}=<version>), a Debian suite "
            f"({suites.known()}) nor a directory"
        )
    if not (path / "Makefile").is_file() or not (path / "Kconfig").is_file():
        raise ProvisionError(f"kernel source {path}: no Makefile and Kconfig; not a kernel tree")
    return TreeSource(path.resolve())


def parse_build_spec(text: str, cwd: Path | None = None) -> BuildSpec:
    """`build:SOURCE[+PATCHES]` (see the module docstring)."""
    if not text.startswith(PREFIX):
        raise ProvisionError(f"not a build spec: {text!r} (want {PREFIX}SOURCE[+PATCHES])")
    source_text, plus, patches_text = text[len(PREFIX) :].partition("+")
    if plus and not patches_text:
        raise ProvisionError(f"{text!r}: nothing after '+' (want {PREFIX}SOURCE+PATCHES)")
    patches = None
    if patches_text:
        patches = ((cwd or Path.cwd()) / Path(patches_text).expanduser()).resolve()
        if not patches.exists():
            raise ProvisionError(f"{text!r}: patch series {patches} does not exist")
    return BuildSpec(parse_source(source_text, cwd), patches)
