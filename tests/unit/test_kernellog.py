from __future__ import annotations

from rig.kernellog import kernel_trouble


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
