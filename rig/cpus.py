"""Which CPU a rig's QEMU and device model run on: the same one, the least used.

Every trapped access to the card is a vfio-user round trip: QEMU's vCPU thread writes a
message and sleeps until the model answers. With the two processes on different CPUs, each
hop is a cross-CPU wake-up, and on a virtualised host (this rig's CI machines) that costs a
host exit for the IPI and an idle CPU's wake. On one CPU a hop is a context switch. Measured
here (2 vCPUs, TCG, warp clock, saved VM; `taskset -c 0` around `rig replay`, interleaved,
3 runs each): mstregdump's ~71,000 config-space round trips 3.6-5.2 s instead of 10.9-11.9 s,
the crdump's trapped reads 0.20-0.25 s instead of 0.41-0.55 s (docs/clock.md).

Only where the two take turns: on the warped clock the vCPU waits for every answer
(rig.vm.clock.lockstep) and a shared CPU also carried the 64 MiB transfer faster (12.8 s
against 15.6 s, test_traffic.py, one run each). On the real clock the model walks the rings
while the vCPU runs on (posted doorbells), and a CPU each carries more: 9.8 MB/s against
6.75 MB/s pinned (`rig bench --only traffic`), so there the pair is left to the scheduler.

A rig picks, under a lock, the allowed CPU that the fewest processes are pinned to (kernel
threads left out: a rig's pair counts two), and starts its model there; QEMU follows. Rigs
started side by side (pytest-xdist workers, `rig matrix --workers 2`) so spread over the
CPUs. RIG_PIN=0 leaves both unpinned.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

from rig.cache import cache_root

logger = logging.getLogger(__name__)

PIN_ENV = "RIG_PIN"
# In the cache, which every rig of the user shares: not in $TMPDIR, which differs between
# rigs that should see each other (tests give each rig its own) and must be left empty.
LOCK = ".rig-cpu.lock"


def pinned_to(pid: str) -> int | None:
    """The one CPU user process `pid` may run on, or None (several, a kernel thread, gone)."""
    try:
        if not Path(f"/proc/{pid}/cmdline").read_bytes():
            return None  # a kernel thread: per-CPU ones are alike on every CPU
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("Cpus_allowed_list:"):
            cpus = line.split(":", 1)[1].strip()
            return int(cpus) if cpus.isdigit() else None
    return None


def least_used(allowed: Sequence[int]) -> int:
    """Of `allowed`, the CPU the fewest user processes are pinned to (the lowest on a tie)."""
    count = dict.fromkeys(allowed, 0)
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (cpu := pinned_to(entry)) in count:
            count[cpu] += 1
    return min(allowed, key=lambda c: (count[c], c))


@contextlib.contextmanager
def claim(lockstep: bool = True) -> Iterator[int | None]:
    """The CPU for a rig's pair, held against other rigs until the block ends: start the
    first pinned process inside it. None: no pinning (the pair not in lockstep, one CPU,
    RIG_PIN=0, no taskset)."""
    allowed = sorted(os.sched_getaffinity(0))
    if not lockstep or os.environ.get(PIN_ENV, "1").strip() == "0" or len(allowed) < 2:
        yield None
        return
    if shutil.which("taskset") is None:
        logger.debug("no taskset: QEMU and the device model run unpinned")
        yield None
        return
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    with open(root / LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        cpu = least_used(allowed)
        logger.debug(f"QEMU and the device model on CPU {cpu}")
        yield cpu


def on_cpu(cpu: int | None) -> Sequence[str]:
    """The command prefix that runs a process (and every thread it starts) on `cpu`."""
    return [] if cpu is None else ["taskset", "--cpu-list", str(cpu)]
