"""The guest's clock: `real` (host time, TCG's default) or `warp` (idle guest time is free).

Warp is QEMU's `-icount shift=0,sleep=off`: guest time counts executed instructions (1 ns
each), and when the vCPU idles with nothing to do, QEMU jumps guest time straight to the
next timer instead of sleeping until it. mlx4's 5 s catas poll, its reset's sleeps and its
command timeouts then pass as fast as the guest can execute; host-side waits (SSH, QMP,
the rig's own timeouts) keep the host's clock. What warp changes for the card, and why its
writes wait for the model, is in docs/clock.md.
"""

from __future__ import annotations

import os

from rig.errors import UsageError

WARP = "warp"
REAL = "real"
CLOCKS = (WARP, REAL)
DEFAULT = REAL
ENV = "RIG_CLOCK"  # the clock when no option names one (tox passes RIG_* through)
# ns of guest time per instruction is 2**SHIFT. 0: TCG runs ~0.75-1 G guest instructions a
# second here, so busy guest time stays close to host time. Not shift=auto: QEMU means to
# refuse it with sleep=off (its check reads the option before setting it), and its adaptive
# shift, chasing a host clock the warps keep leaving behind, falls to 0 anyway.
SHIFT = 0


def resolve(clock: str | None) -> str:
    """`clock`, else $RIG_CLOCK, else DEFAULT; UsageError naming a bad one."""
    chosen, origin = (clock, "clock") if clock else (os.environ.get(ENV) or DEFAULT, f"${ENV}")
    if chosen not in CLOCKS:
        raise UsageError(f"{origin} {chosen!r}: choose one of {', '.join(CLOCKS)}")
    return chosen


def qemu_args(clock: str) -> list[str]:
    """QEMU's options for `clock` (TCG only, as the rig runs)."""
    return ["-icount", f"shift={SHIFT},sleep=off"] if clock == WARP else []


def lockstep(clock: str) -> bool:
    """Whether the card works in step with the vCPU on `clock`: QEMU's writes to it wait for
    the model's answer (not posted), and the model finishes a doorbell's work before it
    answers (cx3-device --inline-work). On warp: icount counts instructions, so a vCPU
    waiting for an answer spends no guest time, and the model's work (a command, its
    completion interrupt, a send queue walk) is done when the guest next looks. Otherwise
    the vCPU runs on, idles, and jumps guest time past a command's timeout or TCP's
    retransmit timer while the model is still working; docs/clock.md."""
    return clock == WARP
