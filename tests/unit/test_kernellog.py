from __future__ import annotations

from rig.kernellog import OOPS, PANIC, kernel_trouble, oops_line, panic_reason, report_from


def test_finds_warnings_lockups_and_oopses_only() -> None:
    dmesg = "\n".join(
        [
            "[    7.5] mlx4_core 0000:00:03.0: NOP command IRQ test passed",
            "[   13.6] WARNING: CPU: 0 PID: 1 at net/devlink/leftover.c:123 devl_region_create",
            "[   14.0] watchdog: BUG: soft lockup - CPU#0 stuck for 26s! [kworker/0:1:40]",
            "[   15.0] mlx4_core 0000:00:03.0: crdump: added snapshot 0 to devlink region cr-space",
        ]
    )
    found = kernel_trouble(dmesg)
    assert len(found) == 2
    assert "WARNING" in found[0] and "soft lockup" in found[1]


# The head of a real 6.1 sysrq crash on the rig's console (console.log of `rig run -- sh -c
# 'echo c > /proc/sysrq-trigger'`), and of an oops report.
SYSRQ_PANIC = """\
[    6.301225] sysrq: Trigger a crash
[    6.301530] Kernel panic - not syncing: sysrq triggered crash
[    6.301803] CPU: 0 PID: 252 Comm: sh Not tainted 6.1.0-56-cloud-amd64 #1  Debian 6.1.192-2
[    6.302130] Hardware name: QEMU Standard PC (Q35 + ICH9, 2009), BIOS 1.16.2-debian-1.16.2-1
[    6.320711] Kernel Offset: 0xf000000 from 0xffffffff81000000
"""
OOPS_REPORT = """\
[   12.100000] mlx4_en: eth1: Link Up
[   12.200000] BUG: kernel NULL pointer dereference, address: 0000000000000008
[   12.200100] #PF: supervisor read access in kernel mode
[   12.200200] Oops: 0000 [#1] PREEMPT SMP NOPTI
"""


def test_a_panic_is_named_by_its_reason() -> None:
    assert panic_reason(SYSRQ_PANIC) == "sysrq triggered crash"
    assert panic_reason("[ 1.0] Kernel panic - not syncing:\n") == "no reason given"
    assert panic_reason(OOPS_REPORT) is None
    assert report_from(SYSRQ_PANIC, PANIC, 2).splitlines() == SYSRQ_PANIC.splitlines()[1:3]


def test_an_oops_is_named_by_its_first_line() -> None:
    assert (
        oops_line(OOPS_REPORT) == "BUG: kernel NULL pointer dereference, address: 0000000000000008"
    )
    assert oops_line("[ 3.0] general protection fault, probably for non-canonical address") == (
        "general protection fault, probably for non-canonical address"
    )
    assert (
        oops_line("[ 3.0] kernel BUG at drivers/net/x.c:12!") == "kernel BUG at drivers/net/x.c:12!"
    )
    assert oops_line(SYSRQ_PANIC) is None
    assert oops_line("[ 130.0] watchdog: BUG: soft lockup - CPU#0 stuck for 122s! [sh:1]") is None
    assert oops_line("[ 1.0] DEBUG: nothing to see") is None
    assert report_from(OOPS_REPORT, OOPS).splitlines() == OOPS_REPORT.splitlines()[1:]
