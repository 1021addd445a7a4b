"""`rig bench`: measure the rig on this machine; a table on stdout, the figures in JSON."""

from __future__ import annotations

import argparse
import logging
import shutil
import time
from pathlib import Path

from rig.bench.run import DEFAULT_SECTIONS, SECTIONS, BenchOptions, run_bench, write_json
from rig.bench.stats import format_table
from rig.commands.options import Subparsers, add_guest_options, guest_options, positive_int

logger = logging.getLogger(__name__)


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser(
        "bench",
        help="measure boot, probe, crdump, fault-to-snapshot and replay times",
        description="Boot the rig repeatedly and time its steps; each figure is the median of "
        "--runs runs, with min and max. The default run (the test suite included) takes "
        "about 9 minutes on a warm cache and 2 idle cores; figures taken on a busy machine "
        "are not comparable.",
    )
    p.add_argument("--runs", metavar="N", type=positive_int, default=3, help="runs per figure (3)")
    p.add_argument(
        "--json",
        metavar="FILE",
        type=Path,
        help="write the figures here (default: runs/bench-<time>.json)",
    )
    p.add_argument(
        "--no-suite",
        dest="suite",
        action="store_false",
        help="skip timing the test suite (`tox`: about 4 minutes on 2 cores)",
    )
    p.add_argument(
        "--cold",
        action="store_true",
        help="also time cold provisioning (`rig setup` into an empty temporary "
        "RIG_CACHE; builds QEMU: slow)",
    )
    p.add_argument(
        "--only",
        metavar="SECTION",
        action="append",
        choices=SECTIONS,
        help=f"run only these sections ({', '.join(SECTIONS)}); repeatable",
    )
    p.add_argument(
        "--no-intx",
        dest="intx",
        action="store_false",
        help="skip the crdump with msi_x=0 (every BAR0 read trapped; ~1 min)",
    )
    add_guest_options(p)
    p.add_argument(
        "--keep-logs",
        action="store_true",
        help="keep the VMs' and replays' logs even when everything worked",
    )
    p.set_defaults(func=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    json_path: Path = args.json or Path("runs") / time.strftime("bench-%Y%m%d-%H%M%S.json")
    log_dir = json_path.with_name(json_path.stem + "-logs")
    sections = tuple(args.only) if args.only else DEFAULT_SECTIONS
    if not args.suite:
        sections = tuple(s for s in sections if s != "suite")
    sections += ("cold",) if args.cold else ()
    run = run_bench(
        BenchOptions(
            json_path=json_path,
            log_dir=log_dir,
            runs=args.runs,
            sections=sections,
            intx=args.intx,
            **guest_options(args),
        )
    )
    write_json(run, json_path)
    m = run.machine
    print(
        f"{m['cores']} cores, {m['cpu_model']}, QEMU {m.get('qemu')} (TCG, "
        f"{run.options['clock']} clock; the clock section runs both), guest "
        f"{m.get('guest')}, host {m['host_os']}, {m['date']}, load average "
        f"{m['loadavg_start'][0]:.1f} -> {m['loadavg_end'][0]:.1f}"
    )
    print(format_table(run.results.measured()))
    for f in run.results.missed():
        goal = " and ".join(
            f"{'<=' if k == 'max' else '>='} {v} {f.spec.unit}" for k, v in (f.goal or {}).items()
        )
        print(f"goal missed: {f.spec.key} (median not {goal})")
    for err in run.results.errors:
        print(f"rig: error in {err['section']}: {err['error']}")
    print(f"{run.duration:.0f} s in all")
    if run.results.errors or args.keep_logs:
        logger.info(f"logs: {log_dir}")
    else:
        shutil.rmtree(log_dir, ignore_errors=True)
    logger.info(f"figures: {json_path}")
    return 1 if run.results.errors else 0
