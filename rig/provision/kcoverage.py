"""The coverage kernel: a `build:` kernel with gcov counters in mlx4 and the devlink core only.

CONFIG_GCOV_KERNEL comes from guest/coverage.config (GCOV_PROFILE_ALL off); the directories
to profile get `GCOV_PROFILE` lines appended to their Makefiles in the rig's workspace copy
of the source (put back after the build, like a patch). Profiling only these keeps the guest
as fast as the plain build under TCG.

The compiler records each source as a path relative to the source tree
(-fprofile-prefix-map), and the build keeps what a report needs in the cache entry, which
must stand alone once the workspace is pruned:

    <entry>/gcov/build.json   the object tree's path at build time (the guest's
                              /sys/kernel/debug/gcov/<objtree>/...), the profiled paths
    <entry>/gcov/notes/<dir>/*.gcno   the compiler's notes, beside which the counters go
    <entry>/gcov/src/<dir>/*.[ch]     the profiled sources, for the report
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from rig.errors import ProvisionError

RECIPE = 1  # bump when the coverage build's output changes in a way the inputs do not show
FRAGMENT = "coverage.config"
VARIANT = "coverage"  # the workspace's object tree of its own: switching .config rebuilds all
GCOV_DIR = "gcov"
BUILD_INFO = "build.json"
NOTES = "notes"
SOURCES = "src"
MLX4 = "drivers/net/ethernet/mellanox/mlx4"
# The compiler records sources relative to the tree: the report reads them from the entry.
PREFIX_MAP = "-fprofile-prefix-map=$(srctree)/="


@dataclass(frozen=True)
class Profiled:
    """What is profiled in one source tree: Makefile additions and the paths they cover."""

    makefile_lines: dict[str, str]  # Makefile (relative) -> text appended to it
    paths: tuple[str, ...]  # directories, or single .c files, relative to the tree

    def directories(self) -> tuple[str, ...]:
        return tuple(
            sorted({p if not p.endswith(".c") else str(Path(p).parent) for p in self.paths})
        )


def profiled(src: Path) -> Profiled:
    """mlx4 and the devlink core of this tree: net/core/devlink.c up to 6.1, net/devlink/
    from 6.2 on."""
    if not (src / MLX4 / "Makefile").is_file():
        raise ProvisionError(f"{src}: no {MLX4}/Makefile; not a kernel tree with mlx4")
    whole_dir = f"\n# rig: the coverage kernel\nGCOV_PROFILE := y\nccflags-y += {PREFIX_MAP}\n"
    lines = {f"{MLX4}/Makefile": whole_dir}
    paths = [MLX4]
    if (src / "net/devlink/Makefile").is_file():
        lines["net/devlink/Makefile"] = whole_dir
        paths.append("net/devlink")
    elif (src / "net/core/devlink.c").is_file():
        lines["net/core/Makefile"] = (
            "\n# rig: the coverage kernel\nGCOV_PROFILE_devlink.o := y\n"
            f"CFLAGS_devlink.o += {PREFIX_MAP}\n"
        )
        paths.append("net/core/devlink.c")
    else:
        raise ProvisionError(f"{src}: neither net/devlink/ nor net/core/devlink.c")
    return Profiled(lines, tuple(paths))


def keep_notes(prof: Profiled, src: Path, obj: Path, stage: Path) -> int:
    """Copy the .gcno notes and the profiled sources into the entry; how many notes."""
    root = stage / GCOV_DIR
    count = 0
    for path in prof.paths:
        if path.endswith(".c"):
            stems = [Path(path).with_suffix("")]
        else:
            stems = [p.relative_to(src).with_suffix("") for p in sorted((src / path).glob("*.c"))]
        for stem in stems:
            note = obj / stem.with_suffix(".gcno")
            if note.is_file():
                target = root / NOTES / stem.with_suffix(".gcno")
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(note, target)
                count += 1
    for directory in prof.directories():
        for source in sorted((src / directory).glob("*.[ch]")):
            target = root / SOURCES / directory / source.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
    if count == 0:
        raise ProvisionError(f"the coverage build left no .gcno files under {obj}")
    (root / BUILD_INFO).write_text(
        json.dumps({"objtree": str(obj), "paths": list(prof.paths), "notes": count}, indent=2)
        + "\n"
    )
    return count


@dataclass(frozen=True)
class CoverageBuild:
    """A coverage kernel's gcov directory, read back."""

    root: Path  # <entry>/gcov
    objtree: str  # the build's object tree: the guest's counters live under it in debugfs
    paths: tuple[str, ...]

    @property
    def notes(self) -> Path:
        return self.root / NOTES

    @property
    def sources(self) -> Path:
        return self.root / SOURCES


def coverage_build(kernel_dir: Path) -> CoverageBuild | None:
    """The coverage data of a kernel directory; None for any other kernel."""
    info = kernel_dir / GCOV_DIR / BUILD_INFO
    if not info.is_file():
        return None
    data = json.loads(info.read_text())
    return CoverageBuild(info.parent, str(data["objtree"]), tuple(data["paths"]))
