"""cx3-qemu without a VM: the guest memory it gives the card, the command lines it leaves
alone, and its one-line refusals (the real QEMU behind it: tests/e2e/test_tuxrun.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cx3.qemuwrap import guest_memory, starts_a_vm


@pytest.mark.parametrize(
    ("args", "memory"),
    [
        ([], "128M"),
        (["-m", "2048"], "2048M"),  # MiB to -m, bytes to a memory backend: the unit is added
        (["-cpu", "Nehalem", "-m", "4G", "-nographic"], "4G"),
        (["-m", "size=2G,maxmem=8G"], "2G"),
        (["-m", "1G", "-m", "512M"], "512M"),  # QEMU takes the last
    ],
)
def test_guest_memory(args: list[str], memory: str) -> None:
    assert guest_memory(args) == memory


def test_a_memory_without_a_size_is_refused() -> None:
    with pytest.raises(ValueError, match="-m maxmem=8G: no size in it"):
        guest_memory(["-m", "maxmem=8G"])


@pytest.mark.parametrize(
    ("args", "vm"),
    [
        (["--version"], False),
        (["-L", "help"], False),
        (["-device", "vfio-user-pci,help"], False),
        (["-machine", "q35", "-kernel", "bzImage"], True),
    ],
)
def test_starts_a_vm(args: list[str], vm: bool) -> None:
    assert starts_a_vm(args) is vm


def wrap(args: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in ("CX3_QEMU", "CX3_DIR")}
    return subprocess.run(
        [sys.executable, "-m", "cx3.qemuwrap", *args],
        env={**base, "CX3_DIR": str(tmp_path / "cx3"), **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_without_cx3_qemu_it_says_so(tmp_path: Path) -> None:
    run = wrap(["-m", "1G"], tmp_path)
    assert run.returncode == 2
    assert run.stderr.splitlines() == [
        "cx3-qemu: set CX3_QEMU to the qemu-system-x86_64 to run (>= 10.1)"
    ]


def test_an_info_command_runs_the_real_qemu_alone(tmp_path: Path) -> None:
    run = wrap(["-L", "help"], tmp_path, CX3_QEMU="/bin/echo")
    assert (run.returncode, run.stdout) == (0, "-L help\n")
    assert not (tmp_path / "cx3").exists()  # no card started


def test_the_card_arguments_follow_the_harness_arguments(tmp_path: Path) -> None:
    run = wrap(["-machine", "q35", "-m", "2048"], tmp_path, CX3_QEMU="/bin/echo")
    assert run.returncode == 0, run.stderr
    sock = tmp_path / "cx3" / "cx3.sock"
    assert run.stdout.split()[:4] == ["-machine", "q35", "-m", "2048"]
    assert "memory-backend-memfd,id=mem,size=2048M,share=on" in run.stdout
    assert f'"path":"{sock}"' in run.stdout
    assert f"control socket is {tmp_path / 'cx3' / 'cx3.ctl'}" in run.stderr
    # That "QEMU" exited without ever connecting: the card is told to stop all the same.
    log, deadline = tmp_path / "cx3" / "cx3-device.log", time.monotonic() + 30
    while "stopped by SIGTERM" not in log.read_text():
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)
