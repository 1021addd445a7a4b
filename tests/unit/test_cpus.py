"""rig.cpus: a rig's pair goes to the CPU the fewest processes are pinned to, and the prefix
really pins (real processes, real /proc)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest

from rig import cpus

ALLOWED = sorted(os.sched_getaffinity(0))
needs_two = pytest.mark.skipif(len(ALLOWED) < 2, reason="pinning needs two CPUs")


@pytest.fixture
def sleepers() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for p in procs:
        p.kill()
        p.wait()


def pinned_sleeper(cpu: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([*cpus.on_cpu(cpu), "sleep", "60"])
    # taskset sets the mask, then execs: wait until the pid is sleep with its mask.
    for _ in range(1000):
        if cpus.pinned_to(str(proc.pid)) == cpu and os.readlink(f"/proc/{proc.pid}/exe").endswith(
            "sleep"
        ):
            return proc
        os.sched_yield()
    raise AssertionError(f"sleep {proc.pid} not on CPU {cpu}")


@needs_two
def test_the_prefix_pins_every_thread_a_process_starts(
    sleepers: list[subprocess.Popen[bytes]],
) -> None:
    for cpu in ALLOWED[:2]:
        sleepers.append(pinned_sleeper(cpu))
    assert [cpus.pinned_to(str(p.pid)) for p in sleepers] == ALLOWED[:2]


def test_the_least_used_cpu_is_chosen_lowest_first(monkeypatch: pytest.MonkeyPatch) -> None:
    """Other rigs come and go on this machine: the choice is checked on a fixed /proc."""
    placed = {"100": 0, "101": 0, "102": 1, "103": None, "104": 3}
    monkeypatch.setattr("rig.cpus.os.listdir", lambda _: [*placed, "self", "sys"])
    monkeypatch.setattr(cpus, "pinned_to", placed.get)
    assert cpus.least_used([0, 1]) == 1
    assert cpus.least_used([0, 1, 2]) == 2
    placed["105"] = 1
    assert cpus.least_used([0, 1]) == 0  # a tie: the lowest


def test_unpinned_processes_and_kernel_threads_count_for_no_cpu() -> None:
    assert cpus.pinned_to(str(os.getpid())) == (ALLOWED[0] if len(ALLOWED) == 1 else None)
    assert cpus.pinned_to("2") is None  # kthreadd
    assert cpus.pinned_to("999999999") is None  # gone


@needs_two
def test_a_claim_names_a_cpu_unless_told_not_to(monkeypatch: pytest.MonkeyPatch) -> None:
    with cpus.claim() as cpu:
        assert cpu in ALLOWED
    with cpus.claim(lockstep=False) as cpu:
        assert cpu is None  # the real clock's pair works side by side
    monkeypatch.setenv(cpus.PIN_ENV, "0")
    with cpus.claim() as cpu:
        assert cpu is None
    assert cpus.on_cpu(None) == []
