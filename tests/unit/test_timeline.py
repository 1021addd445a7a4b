"""rig.timeline: one fault's marks from the device's events, the console and the host."""

from __future__ import annotations

from typing import Any

from rig.timeline import fault_marks

T0 = 1000.0  # the injection, host clock
OFFSET = 900.0  # host time - guest printk time


def printk(guest_t: float, text: str, delay: float = 0.0) -> tuple[float, str]:
    """A kernel line as the console delivers it: its printk time, arriving `delay` late."""
    return (guest_t + OFFSET + delay, f"[{guest_t:12.6f}] mlx4_core 0000:00:03.0: {text}")


def events() -> list[dict[str, Any]]:
    return [
        {"t": T0, "kind": "fault", "fault": "catas", "word0": 0x0FFFFFFF},
        {"t": T0 + 0.5, "kind": "cmd", "name": "QUERY_FW"},  # before any reset: not a re-probe
        {"t": T0 + 1.8, "kind": "crdump", "crdump": 0},
        {"t": T0 + 2.3, "kind": "crdump_end"},
        {"t": T0 + 2.4, "kind": "reset", "source": "bar0"},
        {"t": T0 + 3.0, "kind": "cmd", "name": "QUERY_FW"},
        {"t": T0 + 3.1, "kind": "cmd", "name": "QUERY_FW"},  # only the first counts
        {"t": T0 + 3.2, "kind": "irq", "eqn": 4},
    ]


def console() -> list[tuple[float, str]]:
    return [
        (T0 - 5.0, "rig-guest: netup: eth1 state UP"),  # the boot's: before the fault
        printk(T0 - OFFSET + 1.7, "Internal error detected:", delay=0.02),
        printk(T0 - OFFSET + 1.71, "  buf[00]: 0fffffff", delay=0.5),  # a late burst
        printk(T0 - OFFSET + 2.25, "crdump: added snapshot 0 to devlink region cr-space"),
        printk(T0 - OFFSET + 2.26, "crdump: added snapshot 0 to devlink region fw-health"),
        printk(T0 - OFFSET + 3.5, "Internal error detected, restarting device"),
        printk(T0 - OFFSET + 4.0, "mlx4_restart_one was ended, ret=0"),
        (T0 + 4.6, "rig-guest: netup: eth1 state UP"),
    ]


def test_every_witness_on_one_clock_in_order() -> None:
    notes = [(T0 + 2.31, {"region": "cr-space", "snapshot": 0})]
    marks = fault_marks(T0, events(), console(), notes)
    got = [(round(m.t, 3), m.witness, m.what) for m in marks]
    assert got == [
        (0.0, "device", "fault injected: words in the internal-error (catas) buffer"),
        (1.7, "kernel", "the driver detects the internal error"),
        (1.8, "device", "crdump starts: the device captures BAR0"),
        (2.25, "kernel", "the kernel adds cr-space snapshot 0"),
        (2.26, "kernel", "the kernel adds fw-health snapshot 0"),
        (2.3, "device", "crdump ends (block-volatile word cleared)"),
        (2.31, "host", "REGION_NEW cr-space snapshot 0 on the host"),
        (2.4, "device", "device reset (by the driver)"),
        (3.0, "device", "re-probe starts (QUERY_FW)"),
        (3.5, "kernel", "mlx4_en restarts its ports"),
        (4.0, "kernel", "re-probe done (mlx4_restart_one ended)"),
        (4.6, "guest", "eth1 up again with carrier"),
    ]
    assert marks[0].as_dict() == {"t": 0.0, "what": marks[0].what, "witness": "device"}


def test_command_faults_and_a_reload() -> None:
    evs = [
        {"t": T0, "kind": "fault", "fault": "cmd_timeout", "opcode": None},
        {"t": T0 + 1.0, "kind": "cmd", "name": "CLOSE_PORT", "hung": True},
        {"t": T0 + 2.0, "kind": "cmd", "name": "HW2SW_EQ", "status": 1, "injected": True},
    ]
    lines = [printk(T0 - OFFSET + 61.0, "command 0x13 timed out (go bit not cleared)")]
    marks = fault_marks(T0, evs, lines, reload_returned=T0 + 70.0)
    assert [(m.t, m.what) for m in marks] == [
        (0.0, "fault armed: the next command will hang"),
        (1.0, "CLOSE_PORT hangs (the injected timeout)"),
        (2.0, "HW2SW_EQ fails with status 1 (injected)"),
        (61.0, "the driver gives up on command 0x13"),
        (70.0, "`devlink dev reload` returns"),
    ]


def test_no_console_no_kernel_marks() -> None:
    assert [m.witness for m in fault_marks(T0, events()[:1], [])] == ["device"]


def test_on_the_warped_clock_a_kernel_mark_is_its_lines_arrival() -> None:
    # The guest's clock jumped 40 s while it idled between the two lines, the host's 1.2 s:
    # no one offset maps both, and the least-delayed line's would put the first 38.8 s early.
    lines = [
        (T0 + 1.0, "[  100.000000] mlx4_core 0000:00:03.0: Internal error detected:"),
        (T0 + 2.2, "[  140.000000] mlx4_core 0000:00:03.0: mlx4_restart_one was ended, ret=0"),
    ]
    warped = fault_marks(T0, events()[:1], lines, warped=True)
    assert [(round(m.t, 3), m.witness) for m in warped] == [
        (0.0, "device"),
        (1.0, "kernel"),
        (2.2, "kernel"),
    ]
    real = fault_marks(T0, events()[:1], lines)
    assert [round(m.t, 3) for m in real] == [-37.8, 0.0, 2.2]
