"""Where a rig's processes run: on the warped clock QEMU (every thread) and its device model
on one CPU, so a vfio-user round trip between them is a context switch, not a cross-CPU
wake-up; on the real clock wherever the scheduler puts them (rig.cpus)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rig import cpus
from rig.rig import Rig
from rig.vm import clock as vmclock

pytestmark = pytest.mark.e2e


def threads_cpus(pid: int) -> set[str]:
    """Each thread's Cpus_allowed_list."""
    found = set()
    for status in Path(f"/proc/{pid}/task").glob("*/status"):
        for line in status.read_text().splitlines():
            if line.startswith("Cpus_allowed_list:"):
                found.add(line.split(":", 1)[1].strip())
    return found


def test_qemu_and_its_device_model_share_one_cpu(rig: Rig) -> None:
    procs = rig.processes()
    placed = {name: cpus.pinned_to(str(pid)) for name, pid in procs.items()}
    assert placed.keys() == {"QEMU", "device model"}, procs
    assert placed["QEMU"] == placed["device model"], placed
    pinning = (
        vmclock.lockstep(rig.clock)
        and len(os.sched_getaffinity(0)) > 1
        and os.environ.get(cpus.PIN_ENV, "1") != "0"
    )
    assert (placed["QEMU"] is not None) == pinning, placed
    cpu = str(placed["QEMU"])
    if pinning:  # the vCPU thread above all: started after the pin, as every other
        assert threads_cpus(procs["QEMU"]) == {cpu}, threads_cpus(procs["QEMU"])
        assert threads_cpus(procs["device model"]) == {cpu}
