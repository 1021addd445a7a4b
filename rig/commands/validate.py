"""`rig validate`: run the same behaviours on a base and a patched kernel and compare."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from rig.commands.build_kernel import PATCHES_HELP, SOURCE_HELP
from rig.commands.options import Subparsers, add_kcidb_option, add_ktap_option, output_dir
from rig.formats.kcidb import write_kcidb
from rig.formats.ktap import verdict_groups, write_ktap
from rig.jobs.validate import ValidateOptions, run_validate
from rig.jobs.verdict import table
from rig.provision.kbuildspec import DEFAULT_SERIES

logger = logging.getLogger(__name__)


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser(
        "validate",
        help="build a kernel with a driver patch and compare its behaviour with the base",
        description="Build the patched kernel and a base kernel, run the same behaviours on "
        "both (probe, regions, catas snapshots against the device truth via rig replay, "
        "recovery, a second fault, snapshot delete, reload, kernel log), and print one row "
        "per behaviour: same, changed, fixed or REGRESSED. Writes validate.json, "
        "junit.xml and report.html into the run directory. Exit status: 0 no regression, "
        "1 the patched kernel regressed a behaviour, 2 the rig failed (e.g. a patch that "
        "does not apply).",
    )
    p.add_argument("--patches", metavar="PATH", type=Path, required=True, help=PATCHES_HELP)
    p.add_argument(
        "--base",
        metavar="SPEC",
        help="the kernel to compare with: any kernel spec (see `rig setup --help`). "
        "Default: the same source built without the patches, so that the patch is "
        "the only difference (the packaged kernel, `--base default`, also differs "
        "in config and version)",
    )
    p.add_argument("--source", default=DEFAULT_SERIES, metavar="SRC", help=SOURCE_HELP)
    p.add_argument(
        "--fragment",
        metavar="FILE",
        type=Path,
        action="append",
        default=[],
        help="another config fragment for every build, after guest/rig.config",
    )
    p.add_argument("--qemu", metavar="PATH", type=Path, help="use this qemu-system-x86_64")
    p.add_argument(
        "--out", metavar="DIR", type=Path, help="run directory (default: runs/validate-<time>)"
    )
    add_ktap_option(p)
    add_kcidb_option(p)
    p.set_defaults(func=cmd_validate)


def cmd_validate(args: argparse.Namespace) -> int:
    out = output_dir(args.out or Path("runs") / time.strftime("validate-%Y%m%d-%H%M%S"), "--out")
    comparison = run_validate(
        ValidateOptions(
            patches=args.patches,
            out=out,
            source=args.source,
            base=args.base,
            fragments=tuple(f.resolve() for f in args.fragment),
            qemu=args.qemu,
        )
    )
    for k in (comparison.base, comparison.patched):
        print(f"{k.role + ':':<9}{k.release}  {k.origin}")
    print()
    print(table(comparison), end="")
    logger.info(f"results: {out / 'validate.json'}, {out / 'junit.xml'}, {out / 'report.html'}")
    if args.ktap:
        write_ktap(verdict_groups(comparison), args.ktap)
    if args.kcidb:
        kernels = [(k.role, k) for k in (comparison.base, comparison.patched)]
        write_kcidb(out.name, kernels, args.kcidb)
    if comparison.regressions:
        print(f"REGRESSED: {', '.join(comparison.regressions)}")
        return 1
    print("no regression")
    return 0
