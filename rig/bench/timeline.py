"""One catas fault on a single clock: where the time between injection and snapshots goes.

The witnesses and how the guest's printk times are put on the host's clock: rig/timeline.py.

Pure: unit-tested with synthetic logs.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rig import mlx4
from rig.timeline import TimelineError, clock_offset, on_host_clock, printk_lines

DETECTED = re.compile(r"Internal error detected")
CRSPACE_ADDED = re.compile(r"crdump: added snapshot \d+ to devlink region cr-space")
HEALTH_ADDED = re.compile(r"crdump: added snapshot \d+ to devlink region fw-health")
RESTARTED = re.compile(re.escape(mlx4.RESTARTED))


@dataclass(frozen=True)
class CatasTimeline:
    """Phase durations in seconds, in the order they happen."""

    detection: float  # injection -> the driver's catas poll reports it
    error_report: float  # report -> crdump starts (error buffer printk, work queue)
    crdump_loop: float  # crdump start -> cr-space snapshot added (1 MiB of BAR0 read)
    snapshot_creation: float  # -> fw-health read and its snapshot added
    notification: float  # -> both REGION_NEW notifications on the host (netlink, SSH)
    fault_to_snapshots: float  # injection -> both notifications on the host
    reset_and_reprobe: float | None  # fw-health snapshot -> mlx4_restart_one ended
    clock_offset: float  # host time - guest printk time


def _first(lines: Sequence[tuple[float, str]], pattern: re.Pattern[str], what: str) -> float:
    for t, text in lines:
        if pattern.search(text):
            return t
    raise TimelineError(f"the guest never logged {what} ({pattern.pattern!r})")


def _event(events: Sequence[dict[str, Any]], what: str, **match: Any) -> float:
    for e in events:
        if all(e.get(k) == v for k, v in match.items()):
            return float(e["t"])
    raise TimelineError(f"no {what} in the device's event log")


def catas_timeline(
    events: Sequence[dict[str, Any]],
    console: Sequence[tuple[float, str]],
    notifications: Sequence[float],
    warped: bool = False,
) -> CatasTimeline:
    """Phases of one catas fault, from what happened after it was injected.

    `events`: the device's events from the injection on; `console`: the console lines from
    just before the injection on; `notifications`: host arrival times of the REGION_NEW
    notifications for the fault's snapshots; `warped`: the guest ran on the warped clock
    (rig.timeline.on_host_clock).
    """
    printk = printk_lines(console)
    offset = clock_offset(printk)
    lines = on_host_clock(printk, warped)
    injected = _event(events, "catas injection", kind="fault", fault="catas")
    crdump = _event(events, "crdump start", kind="crdump")
    detected = _first(lines, DETECTED, "the internal error")
    crspace = _first(lines, CRSPACE_ADDED, "the cr-space snapshot")
    health = _first(lines, HEALTH_ADDED, "the fw-health snapshot")
    if not notifications:
        raise TimelineError("no REGION_NEW notification arrived")
    visible = max(notifications)
    try:
        restarted: float | None = _first(lines, RESTARTED, "the restart")
    except TimelineError:
        restarted = None
    return CatasTimeline(
        detection=detected - injected,
        error_report=crdump - detected,
        crdump_loop=crspace - crdump,
        snapshot_creation=health - crspace,
        notification=visible - health,
        fault_to_snapshots=visible - injected,
        reset_and_reprobe=None if restarted is None else restarted - health,
        clock_offset=offset,
    )
