"""`rig traffic`: ping and a checked TCP transfer across the card of a running `rig up`.

It works on a rig kept up by `rig up` (over SSH, through the Instance), like `rig sh` and
`rig fault`: booting takes longer than the traffic, and by hand one wants to send traffic,
inject a fault from another terminal, and send again. The netdevs are put into their
namespaces for the run and back into the initial one, up, at the end.
"""

from __future__ import annotations

import argparse
import logging

from rig.commands.options import Subparsers, byte_count, count, seconds
from rig.errors import KernelFailure
from rig.instance import Instance, rig_name
from rig.traffic import COUNTERS, NETNS, TcpResult, Traffic

logger = logging.getLogger(__name__)


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser(
        "traffic",
        help="ping and a SHA-256-checked TCP transfer across a running rig's card",
        description="Put port 1's and port 2's netdevs of a rig kept up by `rig up` into "
        f"network namespaces of their own ({', '.join(NETNS)}) in the guest, ping from one to "
        "the other and send a TCP stream across the card's cable, hashed at both ends; print "
        "the ping summary, bytes, both SHA-256s and both ends' `ethtool -S` counters. Exit 0 "
        "if everything crossed intact, 1 if not (loss, a stall, a hash mismatch), 2 if the "
        "rig failed.",
    )
    p.add_argument(
        "--name", type=rig_name, default="default", help="which rig (default: %(default)s)"
    )
    p.add_argument("--count", type=count, default=100, help="pings (default: %(default)s; 0: none)")
    p.add_argument("--interval", type=seconds, default=0.05, help="s between pings (%(default)s)")
    p.add_argument(
        "--bytes",
        type=byte_count,
        default=8 << 20,
        metavar="N",
        help="TCP bytes to send, e.g. 64M (default: 8M; about 2 MB/s under TCG)",
    )
    p.add_argument("--no-tcp", dest="tcp", action="store_false", help="ping only")
    p.set_defaults(func=cmd_traffic)


def cmd_traffic(args: argparse.Namespace) -> int:
    guest = Instance.find(args.name).guest()
    failures: list[str] = []
    try:
        with Traffic(guest) as t:
            print("path: " + ", ".join(f"{dev} in {ns}" for ns, dev in t.path.items()))
            if args.count:
                ping = t.ping(args.count, args.interval)
                print(f"ping: {ping}")
                if ping.received != ping.transmitted:
                    failures.append(f"ping lost {ping.transmitted - ping.received} packets")
            if args.tcp:
                result = t.tcp(args.bytes)
                show_tcp(result)
                if not result.ok:
                    failures.append(result.problem())
    finally:
        guest.close()
    if failures:
        raise KernelFailure("; ".join(failures))
    print("PASS")
    return 0


def show_tcp(result: TcpResult) -> None:
    for who, end in (("sent", result.sent), ("received", result.received)):
        digest = (
            end.sha256 if end.mismatch_at is None else f"- (differs from byte {end.mismatch_at})"
        )
        print(
            f"tcp {who}: {end.bytes} bytes in {end.elapsed:.1f} s "
            f"({end.bytes / max(end.elapsed, 1e-9) / 1e6:.2f} MB/s), sha256 {digest}, "
            f"longest gap {end.gap.s:.2f} s at byte {end.gap.at_byte}"
            + (f", ERROR {end.error}" if end.error else "")
        )
    print(f"sha256: {'match' if result.sent.sha256 == result.received.sha256 else 'MISMATCH'}")
    for dev in result.netdevs:
        after = result.counters_after.get(dev, {})
        before = result.counters_before.get(dev, {})
        shown = ", ".join(f"{c} +{after[c] - before.get(c, 0)}" for c in COUNTERS if c in after)
        print(f"ethtool -S {dev} (during the transfer): {shown}")
