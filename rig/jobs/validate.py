"""`rig validate`: does a driver patch change what mlx4_core does with its devlink regions?

Build the base and the patched kernel, run the same behaviours (rig.behaviours) on each,
compare them (rig.verdict), and write validate.json, junit.xml and report.html into the run
directory (each kernel's replay has its own report.html under <role>/replay/).

The base is, by default, the same source built with the same config and no patches: then
the patch is the only difference between the two kernels, and the build after the base one
recompiles only what the patch touches. The packaged Debian kernel (--base default) differs
in config and often in version too, so a difference there need not be the patch's.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from rig.formats import validatehtml
from rig.formats.junit import write_junit
from rig.formats.report import Report
from rig.jobs.behaviours import replay_outcome, run_session
from rig.jobs.replay import ReplayOptions, run_replay
from rig.jobs.verdict import KernelResult, Verdict
from rig.progress import step
from rig.provision.guest import ensure_guest
from rig.provision.kbuild import ensure_build
from rig.provision.kbuildspec import BuildSpec, is_build_spec, parse_build_spec, parse_source
from rig.provision.patchseries import load_series
from rig.provision.suites import DEFAULT_SUITE

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ValidateOptions:
    patches: Path
    out: Path
    source: str = "6.1"  # what the patched kernel is built from (see kbuildspec)
    base: str | None = None  # a kernel spec; None: `source` built without the patches
    fragments: tuple[Path, ...] = ()  # extra config fragments for every build
    qemu: Path | None = None
    # One root fs for both kernels, whatever their origin: the kernel is the only difference.
    userspace: str = DEFAULT_SUITE


def base_spec(opts: ValidateOptions, patched: BuildSpec) -> BuildSpec | str:
    """What the base kernel is: a build spec, or any other kernel spec string."""
    if opts.base is None:
        return patched.unpatched()
    if is_build_spec(opts.base):
        spec = parse_build_spec(opts.base)
        return BuildSpec(spec.source, spec.patches, opts.fragments)
    return opts.base


def prepare(role: str, spec: BuildSpec | str, userspace: str | None) -> tuple[str, KernelResult]:
    """Build (or find) and provision a kernel; returns the --kernel argument for its runs.

    Raises ProvisionError before anything boots: a series that does not apply, a failed
    build, a kernel without mlx4_core or devlink.
    """
    if isinstance(spec, BuildSpec):
        built = ensure_build(spec)
        how = "cached" if built.cached else f"built in {built.build['seconds']:.0f} s"
        logger.info(f"{role} kernel: {built.origin} ({how})")
        argument = str(built.path)
        result = KernelResult(
            role,
            spec.describe(),
            build={**built.build, "cached": built.cached, "path": str(built.path)},
        )
    else:
        argument, result = spec, KernelResult(role, spec)
    guest = ensure_guest(argument, userspace)
    result.release, result.origin = guest.kernel.release, guest.kernel.origin
    return argument, result


def run_kernel(
    kernel: str,
    result: KernelResult,
    out: Path,
    userspace: str | None,
    qemu: Path | None,
    qemu_version: str | None = None,
) -> Report:
    """Every behaviour on one kernel (two boots, one after the other), into `result`;
    returns the replay's report (its exit status tells the rig's failures apart).
    `qemu`/`qemu_version`: --qemu/--qemu-version, None for the rig's own QEMU."""
    with step(f"{result.role} kernel {result.release}: rig replay (catas fault)"):
        report = run_replay(
            ReplayOptions(
                out=out / "replay",
                kernel=kernel,
                userspace=userspace,
                qemu=qemu,
                qemu_version=qemu_version,
            )
        )
        result.qemu = str(report.versions.get("qemu") or "")
        result.outcomes["catas-snapshots"] = replay_outcome(report, out / "replay")
    with step(f"{result.role} kernel {result.release}: probe, regions, faults, delete, reload"):
        result.outcomes.update(run_session(kernel, qemu, out / "session", userspace, qemu_version))
    return report


def run_validate(opts: ValidateOptions) -> Verdict:
    t0 = time.monotonic()
    opts.out.mkdir(parents=True, exist_ok=True)
    series = load_series(opts.patches)  # fails now on an unreadable series
    if not series.patches:
        logger.info(f"{opts.patches}: no patches; the patched kernel is the base build")
    patched_spec = BuildSpec(parse_source(opts.source), opts.patches.resolve(), opts.fragments)
    # Both kernels before any boot: a patch that does not apply fails in seconds, not after
    # the base kernel's runs.
    base_kernel, base = prepare("base", base_spec(opts, patched_spec), opts.userspace)
    patched_kernel, patched = prepare("patched", patched_spec, opts.userspace)
    t_built = time.monotonic()
    for kernel, result in ((base_kernel, base), (patched_kernel, patched)):
        run_kernel(kernel, result, opts.out / result.role, opts.userspace, opts.qemu)
    verdict = Verdict.of(base, patched)
    verdict.timings = {
        "build": round(t_built - t0, 1),
        "runs": round(time.monotonic() - t_built, 1),
        "total": round(time.monotonic() - t0, 1),
    }
    verdict.write_json(opts.out / "validate.json")
    write_junit(verdict, opts.out / "junit.xml")
    validatehtml.write(opts.out, verdict)
    return verdict
