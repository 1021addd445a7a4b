"""`rig build-kernel`: build a guest kernel from source, optionally patched, into the cache."""

from __future__ import annotations

import argparse
from pathlib import Path

from rig.commands.options import Subparsers
from rig.provision.kbuild import ensure_build
from rig.provision.kbuildspec import DEFAULT_SERIES, BuildSpec, parse_source
from rig.provision.kernel import ensure_kernel

SOURCE_HELP = (
    f"a series such as {DEFAULT_SERIES} or 6.12 (Debian's linux-source-SERIES, the newest "
    f"version any Debian suite offers), SERIES=VERSION, a Debian suite such as trixie "
    f"(its newest linux-source), or a kernel tree DIR (copied, never modified); "
    f"default: %(default)s"
)
PATCHES_HELP = (
    "a patch series: a directory of *.patch/*.diff (applied in sorted order, or "
    "in the order of its quilt `series` file), a series file, an mbox of "
    "format-patch mails, or one patch"
)


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser(
        "build-kernel",
        help="build a guest kernel from source (optionally patched) into the cache",
        description="Build bzImage and modules from Debian's kernel source or your tree, "
        "configured from `make tinyconfig` plus guest/rig.config, into a cache entry "
        "keyed by source, patches, config and compiler (a second run builds nothing). The "
        "directory it prints is a kernel spec for --kernel; so is "
        "`build:SOURCE[+PATCHES]`, which builds on first use. Builds run under nice -n 19 "
        "with make -j<cores>; the full log is kept in the cache's logs/.",
    )
    p.add_argument("--source", default=DEFAULT_SERIES, metavar="SRC", help=SOURCE_HELP)
    p.add_argument("--patches", metavar="PATH", type=Path, help=PATCHES_HELP)
    p.add_argument(
        "--fragment",
        metavar="FILE",
        type=Path,
        action="append",
        default=[],
        help="another config fragment, merged after guest/rig.config",
    )
    p.add_argument(
        "--coverage",
        action="store_true",
        help="the coverage kernel: gcov counters in mlx4 and the devlink core only "
        "(guest/coverage.config; a cache entry of its own), for `rig coverage`",
    )
    p.set_defaults(func=cmd_build_kernel)


def cmd_build_kernel(args: argparse.Namespace) -> int:
    spec = BuildSpec(
        parse_source(args.source),
        args.patches.resolve() if args.patches else None,
        tuple(f.resolve() for f in args.fragment),
        coverage=args.coverage,
    )
    built = ensure_build(spec)
    b = built.build
    how = (
        "cached (no build)"
        if built.cached
        else (
            f"{b['seconds']:.0f} s, {'cold' if b['cold'] else 'incremental'} "
            f"(make {b['phases']['make']:.0f} s with -j{b['jobs']} under nice -n {b['nice']})"
        )
    )
    print(f"kernel:    {built.release}")
    print(f"origin:    {built.origin}")
    print(f"directory: {built.path}")
    print(f"build:     {how}")
    # The rig's own checks (mlx4_core with crdump, devlink built in), so that a kernel the
    # rig cannot use is reported now rather than at boot.
    ensure_kernel(str(built.path))
    print(f"use it:    rig run --kernel {built.path} -- CMD")
    return 0
