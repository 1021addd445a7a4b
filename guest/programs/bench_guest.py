"""The guest half of `rig bench`: timings only the guest can take, printed as one JSON line.

    python3 bench_guest.py readloop BDF --trapped 0x1f000,... [--register OFF] [--runs N]
    python3 bench_guest.py probe BDF [--param msi_x=1 ...] [--runs N]

`readloop` reads BAR0 the way the driver's crdump does (262,144 32-bit loads) through
/sys/bus/pci/devices/BDF/resource0, which needs the device unbound (Debian's kernels have
IO_STRICT_DEVMEM: a BAR a driver claims cannot be mapped). `sum(memoryview.cast("I"))` runs
the loop in C, one aligned 32-bit load per item; the same sum over anonymous memory gives the
Python cost per item, so the BAR's own cost can be told apart.

`probe` times `modprobe mlx4_core` (the probe is synchronous inside it) and `rmmod`, checking
each time that devlink has the device.

Standard library only: the rig uploads this file and runs it with the guest's python3.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import subprocess
import sys
import time
from collections.abc import Callable

BAR_SIZE = 1 << 20
PAGE = 4096
DWORD = 4


def _ns(fn: Callable[[], object], best_of: int = 1) -> int:
    """Nanoseconds `fn` takes; with best_of, the fastest of that many tries (the cheap loops
    are compared with each other, so they are the ones a busy host must not blur)."""
    best = None
    for _ in range(best_of):
        t0 = time.perf_counter_ns()
        fn()
        elapsed = time.perf_counter_ns() - t0
        best = elapsed if best is None else min(best, elapsed)
    assert best is not None
    return best


def mapped_ranges(trapped: list[int]) -> list[tuple[int, int]]:
    """(start, end) dword indexes of BAR0 outside the trapped pages."""
    ranges, start = [], 0
    for page in sorted(trapped):
        if page > start:
            ranges.append((start // DWORD, page // DWORD))
        start = page + PAGE
    if start < BAR_SIZE:
        ranges.append((start // DWORD, BAR_SIZE // DWORD))
    return ranges


def readloop(bdf: str, trapped: list[int], register: int, runs: int) -> dict[str, object]:
    fd = os.open(f"/sys/bus/pci/devices/{bdf}/resource0", os.O_RDONLY | os.O_SYNC)
    mm = mmap.mmap(fd, BAR_SIZE, mmap.MAP_SHARED, mmap.PROT_READ)
    bar = memoryview(mm).cast("I")
    anon = memoryview(bytearray(BAR_SIZE)).cast("I")
    mapped = [bar[a:b] for a, b in mapped_ranges(trapped)]
    pages = [bar[p // DWORD : (p + PAGE) // DWORD] for p in trapped]
    reg = register // DWORD
    # A register read repeated from Python: the loop's own cost is the same loop on a dword
    # in a mapped page, which costs next to nothing.
    plain = mapped[0]
    repeats = 1000

    def loop(view: memoryview, index: int) -> None:
        for _ in range(repeats):
            view[index]

    def total(views: list[memoryview]) -> None:
        for v in views:
            sum(v)

    out: dict[str, list[int]] = {
        k: [] for k in ("anon", "whole", "mapped", "trapped", "register", "loop")
    }
    for _ in range(runs):
        out["anon"].append(_ns(lambda: sum(anon), best_of=3))
        out["whole"].append(_ns(lambda: sum(bar)))
        out["mapped"].append(_ns(lambda: total(mapped), best_of=3))
        out["trapped"].append(_ns(lambda: total(pages)))
        out["register"].append(_ns(lambda: loop(bar, reg)))
        out["loop"].append(_ns(lambda: loop(plain, 0), best_of=3))
    counts = {
        "whole": len(bar),
        "anon": len(anon),
        "mapped": sum(len(v) for v in mapped),
        "trapped": sum(len(v) for v in pages),
        "register": repeats,
        "loop": repeats,
    }
    for view in (*mapped, *pages, bar):  # mmap.close() refuses while views exist
        view.release()
    mm.close()
    os.close(fd)
    return {"ns": out, "reads": counts}


def _run(argv: list[str]) -> None:
    res = subprocess.run(argv, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(argv)}: exit {res.returncode}: {res.stderr.strip()}")


def probe(bdf: str, params: list[str], runs: int) -> dict[str, object]:
    out: dict[str, list[int]] = {"modprobe": [], "devlink_check": [], "rmmod": []}
    for _ in range(runs):
        t0 = time.perf_counter_ns()
        _run(["modprobe", "mlx4_core", *params])
        t1 = time.perf_counter_ns()
        _run(["devlink", "dev", "show", f"pci/{bdf}"])  # fails unless registered
        t2 = time.perf_counter_ns()
        _run(["rmmod", "mlx4_core"])
        t3 = time.perf_counter_ns()
        out["modprobe"].append(t1 - t0)
        out["devlink_check"].append(t2 - t1)
        out["rmmod"].append(t3 - t2)
    return {"ns": out}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_guest.py")
    sub = parser.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("readloop")
    r.add_argument("bdf")
    r.add_argument("--trapped", required=True, help="comma-separated page offsets")
    r.add_argument("--register", default="0xf03fc")
    r.add_argument("--runs", type=int, default=3)
    p = sub.add_parser("probe")
    p.add_argument("bdf")
    p.add_argument("--param", action="append", default=[])
    p.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    if args.cmd == "readloop":
        trapped = [int(x, 0) for x in args.trapped.split(",")]
        result = readloop(args.bdf, trapped, int(args.register, 0), args.runs)
    else:
        result = probe(args.bdf, args.param, args.runs)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
