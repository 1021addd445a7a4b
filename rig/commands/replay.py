"""`rig replay`: the main job, as a command."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from rig.commands.options import (
    Subparsers,
    add_crspace_options,
    add_driver_options,
    add_guest_options,
    add_ktap_option,
    byte_count,
    driver_options,
    guest_options,
    output_dir,
)
from rig.formats import reporthtml
from rig.formats.coverage import Coverage
from rig.formats.ktap import replay_group, write_ktap
from rig.jobs.replay import ReplayOptions, run_replay
from rig.mlx4 import FAULTS
from rig.traffic import TAIL, TRAFFIC_MOST

logger = logging.getLogger(__name__)


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser(
        "replay",
        help="replay a firmware crash through mlx4_core and check its snapshots",
        description="Boot the rig, load a CR-space image and health buffer into the emulated "
        "ConnectX-3, read CR-space live with mstflint's mstregdump, make the driver hit the "
        "fault, and compare every snapshot it takes (read with devlink over SSH and with "
        "pyroute2 over netlink) with what the device held; report.json and report.html in "
        "the run directory. Exit 0 if everything agrees, 1 if the kernel under test failed (a "
        "snapshot or a reader differs, none was taken, no recovery), 2 if the rig or its "
        "input failed.",
    )
    add_crspace_options(p, "default: a built-in synthetic image")
    p.add_argument(
        "--health",
        metavar="FILE",
        type=Path,
        help="64-byte health buffer, raw or dump text (default: built-in)",
    )
    p.add_argument(
        "--fault",
        choices=FAULTS,
        default="catas",
        help="catas: internal error found by the driver's poll; cmd-timeout: a "
        "firmware command never completes (60 s); closing-cmd: a closing "
        "command fails (both triggered by `devlink dev reload`)",
    )
    p.add_argument(
        "--traffic",
        action="store_true",
        help="run a TCP transfer from port 1 to port 2 across the card through the fault; "
        "after the recovery it must complete with the same SHA-256 at both ends",
    )
    p.add_argument(
        "--traffic-bytes",
        type=byte_count,
        default=TRAFFIC_MOST,
        metavar="N",
        help=f"most bytes of that transfer, e.g. 64M ({TRAFFIC_MOST >> 20}M; it must still run "
        f"at the reset): once the path is restored it ends {TAIL >> 20}M later",
    )
    add_guest_options(p)
    add_driver_options(p)
    p.add_argument(
        "--out", metavar="DIR", type=Path, help="run directory (default: runs/replay-<time>)"
    )
    add_ktap_option(p)
    p.set_defaults(func=cmd_replay)


def cmd_replay(args: argparse.Namespace) -> int:
    out = output_dir(args.out or Path("runs") / time.strftime("replay-%Y%m%d-%H%M%S"), "--out")
    report = run_replay(
        ReplayOptions(
            out=out,
            crspace=args.crspace,
            crspace_format=args.crspace_format,
            health=args.health,
            fault=args.fault,
            **guest_options(args),
            **driver_options(args),
            traffic=args.traffic,
            traffic_bytes=args.traffic_bytes,
        )
    )
    for snap in report.snapshots:
        verdict = "agree" if snap.agree else "DIFFER"
        names = (
            str(c["register"] or f"UNEXPLAINED@{c['offset']:#x}") for c in snap.changed_from_input
        )
        changed = ", ".join(dict.fromkeys(names))  # one mention per register, in order
        print(
            f"{snap.region} snapshot {snap.id}: {snap.size} bytes, CLI/netlink/truth {verdict}"
            f"{'; differs from input in: ' + changed if changed else ''}"
        )
        if snap.coverage is not None:
            print(f"{snap.region} coverage: {Coverage(**snap.coverage).summary()}")
    for r in report.readers:
        moved = ", ".join(dict.fromkeys(str(c["register"]) for c in r.explained))
        print(
            f"reader {r.name}: {r.compared_bytes} bytes ({r.reads}) vs {r.against}: "
            f"{'agree' if r.ok else 'DIFFER: ' + r.problem}"
            f"{'; live registers moved: ' + moved if moved else ''}"
        )
    for when in ("before", "after"):
        for n in report.netdevs.get(when, []):
            print(
                f"netdev {when} the fault: {n['name']} {n['mac']} {n['operstate']}"
                f"{' carrier' if n['carrier'] else ' no carrier'}"
            )
    if report.traffic:
        tr, g = report.traffic, report.traffic["gap_around_fault"]
        for end in ("sent", "received"):
            print(f"traffic {end}: {tr[end]['bytes']} bytes, sha256 {tr[end]['sha256']}")
        print(
            f"traffic gap around the fault: {g['s']:.1f} s at byte {g['at_byte']} (from the "
            f"injection: last byte {g['last_byte_s']:+.1f} s, driver recovered "
            f"{g['recovered_s']:+.1f} s, first byte {g['first_byte_s']:+.1f} s); "
            f"{'hashes match' if tr['sha256_match'] else 'HASHES DIFFER'}"
        )
    for err in report.errors:
        print(f"rig: error: {err}", file=sys.stderr)
    t = report.timings
    if "fault_to_snapshots" in t:
        print(f"fault to snapshots {t['fault_to_snapshots']:.1f} s, total {t['total']:.1f} s")
    logger.info(f"report: {out / 'report.json'}, {out / reporthtml.NAME}")
    if args.ktap:
        write_ktap([replay_group(report)], args.ktap)
    print({0: "PASS", 1: "FAIL"}.get(report.exit_status, "ERROR"))
    return report.exit_status
