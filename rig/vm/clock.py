"""The guest's clock: `real` (host time, TCG's default) or `warp` (idle guest time is cheap).

Warp is QEMU's `-icount shift=0,sleep=on,x-sleep-ratio=RATIO` (the rig's QEMU patch):
guest time counts executed instructions (1 ns each), and while the vCPU idles its time
runs RATIO times faster than the host's, never past its next timer. mlx4's 5 s catas poll,
its reset's sleeps and its command timeouts then pass in 1/RATIO of their time; host-side
waits (SSH, QMP, the rig's own timeouts) keep the host's clock. A QEMU without the patch
gets `sleep=off`: idle time free, but an idle guest's periodic work then runs back to back
and takes a host core. What warp changes for the card, and why its writes wait for the
model, is in docs/clock.md.
"""

from __future__ import annotations

import functools
import logging
import subprocess
from pathlib import Path

from rig import settings

WARP = "warp"
REAL = "real"
CLOCKS = (WARP, REAL)
# Warp since session 9, on evidence: the e2e suite passed 20 times in a row on it (saved
# boots, tests/repeat-suite; docs/clock.md "The default"). `--clock real` or RIG_CLOCK=real
# for host time; tox's e2e env keeps the real clock tested.
DEFAULT = WARP
ENV = "RIG_CLOCK"  # the clock when no option names one (tox passes RIG_* through)
# ns of guest time per instruction is 2**SHIFT. 0: TCG runs ~0.75-1 G guest instructions a
# second here, so busy guest time stays close to host time. Not shift=auto: its adaptive
# shift chases a host clock that warped guest time keeps leaving behind (docs/clock.md).
SHIFT = 0
# For a rig whose guest is busy while it waits for the driver's timers (a TCP stream under a
# catas: the 5 s poll at the stream's pace): at 2 a busy guest's time runs ~3x the host's,
# so that wait is ~1 s, not ~5 s. Not the default: a guest timer then fires 4x as often per
# instruction (mlx4_en's statistics commands, each a dozen round trips in lockstep), which
# made the default replay 7.7 -> 8.1-8.6 s, and it moves the catas poll's phase in a saved
# VM (fault -> snapshots 0.30 -> 0.52 s). docs/clock.md, session 12.
BUSY_SHIFT = 2
SHIFT_ENV = "RIG_WARP_SHIFT"
MAX_SHIFT = 10
# How much faster than the host's an idle guest's time runs on warp. Not unbounded: with
# sleep=off an idle rig's guest time ran ~70x the host's, mlx4_en's statistics command
# (every 250 ms of guest time) ~290 times a host second, and the rig took ~90% of a host
# core doing nothing. At 20 the catas poll's 5 s is 0.25 s, a command timeout's 60 s is 3 s,
# and an idle rig costs ~30% of a core (docs/clock.md has the measurements).
RATIO = 20
RATIO_ENV = "RIG_WARP_RATIO"  # another ratio, to weigh speed against an idle rig's cost
MAX_RATIO = 1000
SLEEP_RATIO = "x-sleep-ratio"  # rig/provision/qemu-patches/0002-icount-x-sleep-ratio.patch

logger = logging.getLogger(__name__)


def resolve(clock: str | None) -> str:
    """`clock`, else $RIG_CLOCK, else DEFAULT; UsageError naming a bad one (or, on warp, a
    bad $RIG_WARP_RATIO: before anything boots)."""
    chosen = settings.choice(clock, "clock", ENV, DEFAULT, CLOCKS)
    if chosen == WARP:
        ratio()
        shift()
    return chosen


def ratio() -> int:
    """$RIG_WARP_RATIO, else RATIO; UsageError naming a bad one."""
    return settings.count(RATIO_ENV, RATIO, MAX_RATIO)


def shift() -> int:
    """$RIG_WARP_SHIFT, else SHIFT; UsageError naming a bad one."""
    return settings.count(SHIFT_ENV, SHIFT, MAX_SHIFT, least=0)


def qemu_args(clock: str, paced: bool = True, warp_shift: int | None = None) -> list[str]:
    """QEMU's options for `clock` (TCG only, as the rig runs); `paced`: the QEMU has
    SLEEP_RATIO (paces_warp); `warp_shift`: this rig's shift (None: shift())."""
    if clock != WARP:
        return []
    n = shift() if warp_shift is None else warp_shift
    if not paced:
        return ["-icount", f"shift={n},sleep=off"]
    return ["-icount", f"shift={n},sleep=on,{SLEEP_RATIO}={ratio()}"]


@functools.cache
def paces_warp(binary: Path) -> bool:
    """Whether this QEMU has SLEEP_RATIO (its -help lists it); logs once if not."""
    try:
        out = subprocess.run(
            [str(binary), "-help"], capture_output=True, text=True, timeout=30, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        out = ""
    paces = SLEEP_RATIO in out
    if not paces:
        logger.warning(
            f"{binary} has no -icount {SLEEP_RATIO} (the rig's QEMU patch): on warp an idle "
            "guest's periodic work runs back to back and takes a host core"
        )
    return paces


def lockstep(clock: str) -> bool:
    """Whether the card works in step with the vCPU on `clock`: QEMU's writes to it wait for
    the model's answer (not posted), the model finishes a doorbell's work before it
    answers (cx3-device --inline-work), and the interrupts it raised meanwhile are delivered
    before the vCPU runs on (QEMU's x-irqs-after-access). On warp: icount counts
    instructions, so a vCPU waiting for an answer spends no guest time, and the model's work
    (a command, its completion interrupt, a send queue walk) is done when the guest next
    looks. Otherwise
    the vCPU runs on, idles, and jumps guest time past a command's timeout or TCP's
    retransmit timer while the model is still working; docs/clock.md."""
    return clock == WARP
