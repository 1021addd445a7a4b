"""`rig coverage`: kernel line and branch coverage of mlx4 and devlink under the e2e suite (or
a part of it, or one `rig replay`), on the coverage kernel."""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from rig.commands.build_kernel import PATCHES_HELP, SOURCE_HELP
from rig.commands.options import Subparsers, output_dir
from rig.errors import RigError, UsageError
from rig.gcov import GCOV_ENV
from rig.jobs.coverage import COVERAGE_JSON, HTML, build_report, gcovr_available
from rig.progress import step
from rig.provision.kbuild import ensure_build
from rig.provision.kbuildspec import DEFAULT_SERIES, BuildSpec, parse_source
from rig.provision.kcoverage import coverage_build
from rig.provision.kernel import KERNEL_ENV

logger = logging.getLogger(__name__)

RUNS = "runs"  # under --out: pytest's base temp (each VM's log dir) or the replay's run dir
COUNTERS = "counters"  # under --out: every VM's gcov counters ($RIG_GCOV_DIR of the run)
SUITE = ["-m", "e2e and not kbuild and not virtme and not coverage"]
# As tox's e2e env runs it: one VM per core (module rigs stay on one worker). The counters
# of every VM are merged, so the parallel run measures the same as a serial one.
PARALLEL = ["-n", "auto", "--dist", "loadscope"]


def default_tests() -> Path:
    """tests/e2e of the checkout the rig runs from."""
    return Path(__file__).resolve().parents[2] / "tests" / "e2e"


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser(
        "coverage",
        help="kernel line/branch coverage of mlx4 and devlink under the e2e suite or a replay",
        description="Build (once, into the cache) the coverage kernel: `rig build-kernel "
        "--coverage`, gcov counters in mlx4 and the devlink core only. Run the e2e suite on it "
        "(every boot that names no kernel gets it: RIG_KERNEL), or the pytest arguments after "
        "--, or with --replay one `rig replay` (its options after --). Every VM saves its "
        "counters as it stops; gcovr merges them into OUT/html/index.html, OUT/gcovr.json and "
        "OUT/coverage.json (per file, lines and branches hit/total; per function for crdump, "
        "catas, reset and devlink regions), and the table is printed. Exit: the run's own "
        "(0 passed, 1 a test or the kernel failed), 2 if the rig or its input failed.",
    )
    p.add_argument("--source", default=DEFAULT_SERIES, metavar="SRC", help=SOURCE_HELP)
    p.add_argument("--patches", metavar="PATH", type=Path, help=PATCHES_HELP)
    p.add_argument(
        "--out", metavar="DIR", type=Path, default=Path("coverage"), help="default: %(default)s"
    )
    p.add_argument(
        "--replay",
        action="store_true",
        help="run `rig replay` (the arguments after -- are its own) instead of pytest",
    )
    p.add_argument(
        "--report-only",
        action="store_true",
        help="run nothing: merge the counters already under OUT/counters again",
    )
    p.add_argument("args", nargs=argparse.REMAINDER, help="-- PYTEST ARGS (or REPLAY ARGS)")
    p.set_defaults(func=cmd_coverage)


def cmd_coverage(args: argparse.Namespace) -> int:
    extra: list[str] = args.args[1:] if args.args[:1] == ["--"] else args.args
    if extra and args.report_only:
        raise UsageError("--report-only runs nothing: it takes no arguments after --")
    if not gcovr_available():
        raise UsageError("gcovr is not installed: pip install 'mlx4-rig[coverage]'")
    out = output_dir(args.out, "--out").resolve()
    runs, counters = out / RUNS, out / COUNTERS
    spec = BuildSpec(
        parse_source(args.source),
        args.patches.resolve() if args.patches else None,
        coverage=True,
    )
    built = ensure_build(spec)
    build = coverage_build(built.path)
    if build is None:
        raise RigError(f"{built.path}: a coverage build without gcov data; rebuild it")
    status = 0
    if not args.report_only:
        command = run_command(args.replay, extra, built.path, runs)
        runs.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(counters, ignore_errors=True)  # an earlier run's must not be merged
        env = dict(os.environ, **{KERNEL_ENV: str(built.path), GCOV_ENV: str(counters)})
        t0 = time.monotonic()
        with step(f"running {'rig replay' if args.replay else 'pytest'} on {built.release}"):
            status = subprocess.run(command, env=env, cwd=Path.cwd(), check=False).returncode
        logger.info(f"the run exited {status} after {time.monotonic() - t0:.0f} s")
    with step("merging the counters with gcovr"):
        report = build_report(build, counters, out, out / "gcovr.log")
    print(report.table())
    print(f"\n{report.runs} VM(s) merged; report: {out / HTML}; figures: {out / COVERAGE_JSON}")
    return run_status(status, args.replay)


def run_command(replay: bool, extra: list[str], kernel: Path, runs: Path) -> list[str]:
    if replay:
        return [
            sys.executable,
            "-m",
            "rig",
            "replay",
            "--kernel",
            str(kernel),
            "--out",
            str(runs / "replay"),
            *extra,
        ]
    parallel = PARALLEL if importlib.util.find_spec("xdist") else []
    selection = extra or [*SUITE, *parallel, str(default_tests())]
    return [
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        f"--basetemp={runs}",
        "--rig-kernel",
        str(kernel),
        *selection,
    ]


def run_status(status: int, replay: bool) -> int:
    """The command's exit status from the run's: rig replay's is already the rig's; pytest's
    1 (tests failed) is 1, its others (interrupted, usage, internal, none collected) 2."""
    if replay or status in (0, 1):
        return status
    logger.info(f"pytest exited {status}: the run did not complete")
    return 2
