"""Build the guest kernel from source, optionally patched, into a cache entry the rig boots
like any kernel directory (KernelSpec.from_directory):

    <cache>/kbuild/<version>-<series>-<key>/
        bzImage  config  System.map  lib/modules/<release>/  kernel.json  build.log

The key covers the source (package version, or the tree's fingerprint), the patches'
contents, the config fragments, the compiler and RECIPE: a second run with the same inputs
builds nothing. Builds run under `nice -n 19` on every core: VMs of concurrent runs keep
their CPU. The full log is <cache>/logs/kbuild-<entry>.log (copied into the entry).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rig.cache import CacheEntry, cache_root, entry
from rig.errors import ProvisionError
from rig.progress import run_logged, step
from rig.provision import kcoverage
from rig.provision.apt import ensure_packages
from rig.provision.guestfiles import guest_asset
from rig.provision.kbuildspec import BuildSpec
from rig.provision.kconfig import Fragments, configure
from rig.provision.ksource import ResolvedSource, resolve
from rig.provision.kworkspace import Workspace
from rig.provision.locking import building
from rig.provision.patchseries import EMPTY, Series, load_series

logger = logging.getLogger(__name__)

# Bump when what a build produces changes in a way the inputs do not show.
RECIPE = 1
KIND = "kbuild"
ARCH = "x86_64"
LOCALVERSION = "-rig"
NICE = 19  # concurrent runs' VMs keep their CPU while a kernel compiles
FRAGMENT = "rig.config"
INFO_FILE = "kernel.json"
BUILD_PACKAGES = (
    "build-essential",  # gcc, make, libc headers
    "flex",
    "bison",
    "bc",
    "libelf-dev",  # objtool
    "xz-utils",  # the linux-source tarball
    "git",  # git apply
    "kmod",  # depmod at modules_install
)
# Fixed build identity: the base and the patched build then share every object a patch does
# not touch, and the same inputs give the same bzImage.
REPRODUCIBLE_ENV = {
    "KBUILD_BUILD_TIMESTAMP": "2000-01-01 00:00:00 UTC",
    "KBUILD_BUILD_USER": "rig",
    "KBUILD_BUILD_HOST": "mlx4-rig",
    "KBUILD_BUILD_VERSION": "1",
}
_COMPILE_ERROR = re.compile(r": (?:fatal )?error: |undefined reference|: multiple definition")
_MAKE_ERROR = re.compile(r"^make(?:\[\d+\])?: \*\*\* ")


@dataclass(frozen=True)
class BuiltKernel:
    path: Path  # the kernel directory: bzImage + lib/modules/<release>
    release: str
    origin: str
    build: dict[str, Any]  # how it was built: seconds, phases, jobs, cold
    cached: bool  # found in the cache by this call


def jobs() -> int:
    return len(os.sched_getaffinity(0))


def compiler_version() -> str:
    try:
        out = subprocess.run(["gcc", "--version"], capture_output=True, text=True, check=False)
    except OSError:
        return "none"
    return out.stdout.splitlines()[0].strip() if out.stdout else "unknown"


def build_inputs(
    source: ResolvedSource,
    series: Series,
    fragments: Fragments,
    compiler: str,
    coverage: bool = False,
) -> dict[str, object]:
    """What the cache key of a build covers."""
    inputs: dict[str, object] = {
        "recipe": RECIPE,
        "source": source.identity,
        "patches": series.digest,
        "fragments": fragments.digest,
        "compiler": compiler,
        "arch": ARCH,
        "localversion": LOCALVERSION,
    }
    if coverage:  # only then: the other builds keep the keys they have always had
        inputs["coverage"] = kcoverage.RECIPE
    return inputs


def entry_name(source: ResolvedSource, series: Series, coverage: bool = False) -> str:
    """<version>-base, or <version>-<series name> for a patched build; -coverage after it
    for the coverage kernel."""
    suffix = f"-{kcoverage.VARIANT}" if coverage else ""
    if not series.patches:
        return f"{source.version}-base{suffix}"
    stem = Path(series.origin).name
    return f"{source.version}-{re.sub(r'[^A-Za-z0-9._-]+', '_', stem)[:40]}{suffix}"


def origin(source: ResolvedSource, series: Series, extra_fragments: Sequence[Path] = ()) -> str:
    """What the kernel is built from, for messages and reports: source, patches and any
    config fragment beyond the rig's own."""
    text = f"build:{source.label}" + (f"+{series.describe()}" if series.patches else "")
    return text + "".join(f" with {p.name}" for p in extra_fragments)


def make_command(src: Path, out: Path) -> list[str]:
    return [
        "nice",
        "-n",
        str(NICE),
        "make",
        "-C",
        str(src),
        f"O={out}",
        f"ARCH={ARCH}",
        f"LOCALVERSION={LOCALVERSION}",
    ]


def rig_fragment() -> Path:
    return guest_asset(FRAGMENT)


def ensure_build(spec: BuildSpec) -> BuiltKernel:
    """The built kernel for `spec`, from the cache or built now."""
    resolve_log = cache_root() / "logs" / "kbuild.log"
    source = resolve(spec.source, resolve_log)
    series = load_series(spec.patches) if spec.patches is not None else EMPTY
    extra = (guest_asset(kcoverage.FRAGMENT),) if spec.coverage else ()
    fragments = Fragments.load([rig_fragment(), *extra, *spec.fragments])
    e = entry(
        KIND,
        entry_name(source, series, spec.coverage),
        build_inputs(source, series, fragments, compiler_version(), spec.coverage),
    )
    cached = True
    with building(e) as missing:
        if missing:
            cached = False
            _build(e, source, series, fragments, spec.coverage)
    return read_built(e.path, cached)


def read_built(path: Path, cached: bool = True) -> BuiltKernel:
    data = json.loads((path / INFO_FILE).read_text())
    return BuiltKernel(path, str(data["release"]), str(data["origin"]), dict(data["build"]), cached)


def build_log(e: CacheEntry) -> Path:
    return cache_root() / "logs" / f"kbuild-{e.name}-{e.key}.log"


def _build(
    e: CacheEntry,
    source: ResolvedSource,
    series: Series,
    fragments: Fragments,
    coverage: bool = False,
) -> None:
    log = build_log(e)
    log.parent.mkdir(parents=True, exist_ok=True)
    made_from = origin(source, series, fragments.paths[1:])
    log.write_text(
        f"# kernel build {e.name} ({made_from})\n# inputs: {json.dumps(e.inputs, sort_keys=True)}\n"
    )
    ensure_packages(BUILD_PACKAGES, log, "building a guest kernel")
    n = jobs()
    phases: dict[str, float] = {}
    t_start = time.monotonic()
    with (
        step(f"building guest kernel {e.name} from {source.label}"),
        Workspace.open(source, log, variant=kcoverage.VARIANT if coverage else "") as ws,
    ):
        phases["unpack"] = time.monotonic() - t_start
        cold = ws.is_cold()
        if series.skipped:
            logger.info(f"skipping patches without a diff: {', '.join(series.skipped)}")
        if series.patches:
            t0 = time.monotonic()
            with step(f"applying {series.describe()}"):
                ws.apply(series, log)
            phases["patch"] = time.monotonic() - t0
        profiled = kcoverage.profiled(ws.src) if coverage else None
        if profiled is not None:
            ws.append(profiled.makefile_lines)
        t0 = time.monotonic()
        with step("configuring (tinyconfig + " + " + ".join(p.name for p in fragments.paths) + ")"):
            config = configure(make_command(ws.src, ws.cfg), ws.src, ws.cfg, fragments, log)
            _sync_config(config, ws.obj / ".config")
        phases["configure"] = time.monotonic() - t0
        t0 = time.monotonic()
        what = "everything (cold)" if cold else "what changed since the last build here"
        with step(f"compiling {what} with make -j{n} under nice -n {NICE}"):
            _make(ws, ["bzImage", "modules"], f"-j{n}", log)
        phases["make"] = time.monotonic() - t0
        t0 = time.monotonic()
        with e.build() as stage:
            release = _install(ws, stage, log)
            if profiled is not None:
                kcoverage.keep_notes(profiled, ws.src, ws.obj, stage)
            phases["install"] = time.monotonic() - t0
            total = time.monotonic() - t_start
            build = {
                "seconds": round(total, 1),
                "phases": {k: round(v, 1) for k, v in phases.items()},
                "jobs": n,
                "cold": cold,
                "nice": NICE,
            }
            _record(stage, release, made_from, source, series, fragments, build)
            with log.open("a") as f:
                f.write(f"\n# build finished: {json.dumps(build)}\n")
            shutil.copyfile(log, stage / "build.log")
    logger.info(
        f"kernel {release} built in {total:.0f} s ({'cold' if cold else 'incremental'}: "
        f"make {phases['make']:.0f} s with -j{n}); log: {log}"
    )


def _record(
    stage: Path,
    release: str,
    made_from: str,
    source: ResolvedSource,
    series: Series,
    fragments: Fragments,
    build: dict[str, Any],
) -> None:
    """kernel.json: what the entry holds and how it was made (read back by read_built)."""
    (stage / INFO_FILE).write_text(
        json.dumps(
            {
                "release": release,
                "origin": made_from,
                "source": source.label,
                "patches": [
                    {"name": p.name, "subject": p.subject, "sha256": p.digest}
                    for p in series.patches
                ],
                "skipped": list(series.skipped),
                "fragments": [str(p) for p in fragments.paths],
                # configure() has checked each of these against the final .config.
                "fragment_settings_verified": len(fragments.settings),
                "build": build,
            },
            indent=2,
        )
        + "\n"
    )


def _sync_config(config: Path, target: Path) -> None:
    """Copy the new .config over the build's only if it differs: a rewritten one with the
    same contents would still make kbuild re-run syncconfig and check every object."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.is_file() or target.read_bytes() != config.read_bytes():
        shutil.copyfile(config, target)


def _make(ws: Workspace, targets: list[str], jobs_flag: str, log: Path) -> None:
    start = log.stat().st_size
    try:
        run_logged(
            [*make_command(ws.src, ws.obj), jobs_flag, *targets],
            log,
            f"make {' '.join(targets)}",
            env=REPRODUCIBLE_ENV,
        )
    except ProvisionError as e:
        # Paths inside the workspace say nothing to the reader; the tail keeps them.
        errors = [e.replace(f"{ws.src}/", "") for e in compile_errors(_read_from(log, start))]
        if errors:
            raise ProvisionError(
                f"{e.args[0]}; first errors:\n  " + "\n  ".join(errors), log, e.tail
            ) from e
        raise


def _read_from(log: Path, offset: int) -> str:
    with log.open("rb") as f:
        f.seek(offset)
        return f.read().decode("utf-8", "replace")


def compile_errors(text: str, limit: int = 5) -> list[str]:
    """The first compiler/linker error lines of a make run (make -j interleaves output, so
    the tail alone often shows only make's own complaints); else make's first complaint."""
    lines = text.splitlines()
    found = [ln.strip() for ln in lines if _COMPILE_ERROR.search(ln)]
    return found[:limit] or [ln.strip() for ln in lines if _MAKE_ERROR.search(ln)][:1]


def _install(ws: Workspace, stage: Path, log: Path) -> str:
    run_logged(
        [*make_command(ws.src, ws.obj), f"INSTALL_MOD_PATH={stage}", "modules_install"],
        log,
        "make modules_install",
        env=REPRODUCIBLE_ENV,
    )
    release = (ws.obj / "include" / "config" / "kernel.release").read_text().strip()
    modules = stage / "lib" / "modules" / release
    if not (modules / "modules.dep").is_file():
        raise ProvisionError(f"modules_install left no {modules}/modules.dep", log)
    # These point into the workspace, which is pruned: the entry must stand alone.
    for link in ("build", "source"):
        (modules / link).unlink(missing_ok=True)
    shutil.copyfile(ws.obj / "arch" / "x86" / "boot" / "bzImage", stage / "bzImage")
    shutil.copyfile(ws.obj / ".config", stage / "config")
    shutil.copyfile(ws.obj / "System.map", stage / "System.map")
    return release
