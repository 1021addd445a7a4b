"""A fault on one clock: what each witness saw, on the host's CLOCK_MONOTONIC.

Witnesses:
* the device model's event log (its own process, the same clock): the injection, the crdump
  start and end (the driver's "block volatile accesses" writes), the reset, the re-probe's
  first command;
* the guest kernel's log lines, as the serial console delivered them: each carries the
  guest's printk timestamp and the host time it arrived. The console only ever adds delay,
  so the smallest (arrival - printk time) over the lines is the best estimate of the
  guest-to-host clock offset, and printk times are mapped with it (a console burst that
  arrives late then does not skew the marks). On the warped clock (rig.vm.clock) the
  guest's time jumps ahead whenever it idles, so no one offset holds: a line's arrival is
  its time there (an upper bound, late by the console's delay);
* the host: the REGION_NEW notifications as the netlink watcher's lines arrive, and a
  `devlink dev reload` returning;
* the guest's init on the console (no printk time: its arrival time): a netdev up again.

Pure: unit-tested with synthetic logs.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rig import mlx4
from rig.errors import RigError

PRINTK = re.compile(r"^\[\s*(\d+\.\d+)\]\s(.*)$")
NETUP = re.compile(r"rig-guest: netup: (\S+) state UP")

# The kernel lines of a fault's story (drivers/net/ethernet/mellanox/mlx4/catas.c, crdump.c,
# cmd.c), each with what the timeline says of it ({} takes the match's groups).
KERNEL_MARKS = (
    (re.compile(re.escape(mlx4.INTERNAL_ERROR) + ":"), "the driver detects the internal error"),
    (re.compile(r"device is going to be reset"), "the driver: the device is going to be reset"),
    (re.compile(r"device was reset successfully"), "the driver: the device was reset"),
    (re.compile(r"Internal error detected, restarting"), "mlx4_en restarts its ports"),
    (re.compile(r"command (0x[0-9a-f]+) timed out"), "the driver gives up on command {0}"),
    (
        re.compile(r"crdump: added snapshot (\d+) to devlink region (\S+)"),
        "the kernel adds {1} snapshot {0}",
    ),
    (re.compile(re.escape(mlx4.RESTARTED)), "re-probe done (mlx4_restart_one ended)"),
)
INJECTED = {
    "catas": "fault injected: words in the internal-error (catas) buffer",
    "cmd_timeout": "fault armed: the next command will hang",
    "closing_cmd": "fault armed: the next closing command will fail",
}


class TimelineError(RigError):
    pass


@dataclass(frozen=True)
class Mark:
    t: float  # seconds from the injection
    what: str
    witness: str  # "device", "kernel", "host" or "guest"

    def as_dict(self) -> dict[str, object]:
        return {"t": round(self.t, 6), "what": self.what, "witness": self.witness}


def printk_lines(console: Sequence[tuple[float, str]]) -> list[tuple[float, float, str]]:
    """(host arrival, guest printk time, text) of the console lines that are kernel messages."""
    out = []
    for host_t, line in console:
        if m := PRINTK.match(line.strip()):
            out.append((host_t, float(m.group(1)), m.group(2)))
    return out


def clock_offset(lines: Sequence[tuple[float, float, str]]) -> float:
    if not lines:
        raise TimelineError("no kernel messages on the console to align the guest's clock")
    return min(host - guest for host, guest, _ in lines)


def on_host_clock(
    lines: Sequence[tuple[float, float, str]], warped: bool = False
) -> list[tuple[float, str]]:
    """(host time, text) of printk_lines: printk time + clock_offset, or on the warped clock
    (where the guest's time does not follow the host's) the line's arrival."""
    if warped:
        return [(host, text) for host, _, text in lines]
    offset = clock_offset(lines)
    return [(guest + offset, text) for _, guest, text in lines]


def fault_marks(
    t_fault: float,
    events: Sequence[dict[str, Any]],
    console: Sequence[tuple[float, str]],
    notifications: Sequence[tuple[float, dict[str, Any]]] = (),
    reload_returned: float | None = None,
    warped: bool = False,
) -> list[Mark]:
    """Every witness's marks of one fault, in time order, in seconds from `t_fault`.

    `events`: the device's events from just before the injection on; `console`: the console
    lines from just before it on; `notifications`: (host arrival, message) of the REGION_NEW
    notifications; `reload_returned`: when a `devlink dev reload` returned, for command faults;
    `warped`: the guest ran on the warped clock (on_host_clock).
    """
    marks = [
        *_device_marks(events),
        *_kernel_marks(console, warped),
        *_guest_marks(console, t_fault),
    ]
    for t, note in notifications:
        what = f"REGION_NEW {note.get('region')} snapshot {note.get('snapshot')} on the host"
        marks.append(Mark(t, what, "host"))
    if reload_returned is not None:
        marks.append(Mark(reload_returned, "`devlink dev reload` returns", "host"))
    return sorted((Mark(m.t - t_fault, m.what, m.witness) for m in marks), key=lambda m: m.t)


def _device_marks(events: Sequence[dict[str, Any]]) -> list[Mark]:
    marks = []
    after_reset = False
    for e in events:
        t, kind = float(e["t"]), e.get("kind")
        if kind == "fault" and e.get("fault") in INJECTED:
            marks.append(Mark(t, INJECTED[str(e["fault"])], "device"))
        elif kind == "cmd" and e.get("hung"):
            marks.append(Mark(t, f"{e.get('name')} hangs (the injected timeout)", "device"))
        elif kind == "cmd" and e.get("injected"):
            what = f"{e.get('name')} fails with status {e.get('status')} (injected)"
            marks.append(Mark(t, what, "device"))
        elif kind == "crdump":
            marks.append(Mark(t, "crdump starts: the device captures BAR0", "device"))
        elif kind == "crdump_end":
            marks.append(Mark(t, "crdump ends (block-volatile word cleared)", "device"))
        elif kind == "reset":
            by = "the driver" if e.get("source") == "bar0" else str(e.get("source"))
            marks.append(Mark(t, f"device reset (by {by})", "device"))
            after_reset = True
        elif kind == "cmd" and after_reset and e.get("name") == "QUERY_FW":
            marks.append(Mark(t, "re-probe starts (QUERY_FW)", "device"))
            after_reset = False
    return marks


def _kernel_marks(console: Sequence[tuple[float, str]], warped: bool) -> list[Mark]:
    lines = printk_lines(console)
    if not lines:
        return []
    marks = []
    for t, text in on_host_clock(lines, warped):
        for pattern, what in KERNEL_MARKS:
            if m := pattern.search(text):
                marks.append(Mark(t, what.format(*m.groups()), "kernel"))
    return marks


def _guest_marks(console: Sequence[tuple[float, str]], t_fault: float) -> list[Mark]:
    return [
        Mark(t, f"{m.group(1)} up again with carrier", "guest")
        for t, line in console
        if t >= t_fault and (m := NETUP.search(line))
    ]
