"""The card in a tuxrun/LAVA job, as far as it runs offline here (docs/integrations.md).

tuxlava, the job generator tuxrun runs, writes the LAVA job definition for its qemu-x86_64
device with the rig's kernel; the device dictionary is rendered from the job's context with
LAVA's qemu device-type template (tuxlava's copy, which tuxrun hands to lava-run); the QEMU
command line is assembled the way LAVA's CallQemuAction does (`which` of the command, then
`options`, `extra` and each deploy image's `image_arg`, joined with spaces, split again by
pexpect) and started - the recipe - with `cx3-qemu` first on PATH as `qemu-system-x86_64`
and the rig's QEMU behind it, paused (`-S` and a QMP socket added by the test): 15b3:1003 is
on its PCI bus, the card's control socket answers, and the card stops once QEMU quits.
lava-dispatcher itself does not run here (Debian's package pulls in 137 others, its own QEMU
7.2 among them, too old for vfio-user-pci); nor does tuxrun's container runtime."""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from tuxlava.devices import Device

from cx3.client import ControlClient
from rig.provision.kernel import ensure_kernel
from rig.provision.qemu import ensure_qemu
from tests.e2e.test_standalone import TIMEOUT, pci_ids_once_up, qmp

pytestmark = pytest.mark.e2e


def tuxlava_job(kernel: Path, rootfs: Path) -> dict[str, Any]:
    """The job definition tuxlava writes (its command line, as a user would run it)."""
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "tuxlava",
            "--device",
            "qemu-x86_64",
            "--kernel",
            kernel.as_uri(),
            "--rootfs",
            rootfs.as_uri(),
            "--",
            "cat /proc/cmdline",
        ],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=True,
    )
    job = yaml.safe_load(run.stdout)
    assert isinstance(job, dict), run.stdout
    return job


def lava_command(job: dict[str, Any], path: str, files: dict[str, Path]) -> list[str]:
    """The QEMU command LAVA's qemu boot method runs for this job on a worker with this PATH:
    the device dictionary from the job's context, then the deploy images' arguments."""
    device = yaml.safe_load(Device.select("qemu-x86_64")().device_dict(dict(job["context"])))
    params = device["actions"]["boot"]["methods"]["qemu"]["parameters"]
    qemu = shutil.which(params["command"], path=path)
    assert qemu is not None, params["command"]
    parts = [qemu, *params["options"], *(str(e) for e in params.get("extra", []))]
    (deploy,) = [a["deploy"] for a in job["actions"] if "deploy" in a]
    for label, image in deploy["images"].items():
        parts.append(image["image_arg"].replace(f"{{{label}}}", str(files[label])))
    return shlex.split(" ".join(parts))  # pexpect.spawn splits a command string like a shell


def test_a_tuxlava_job_runs_the_card_through_cx3_qemu(tmp_path: Path) -> None:
    qemu = ensure_qemu()
    kernel = ensure_kernel().vmlinuz
    rootfs = tmp_path / "rootfs.ext4"
    rootfs.write_bytes(bytes(1 << 20))  # paused before the firmware: never read
    bin_dir, card_dir, mon = tmp_path / "bin", tmp_path / "cx3", tmp_path / "qmp.sock"
    bin_dir.mkdir()
    # The recipe: cx3-qemu as the worker's qemu-system-x86_64, the real one in CX3_QEMU.
    (bin_dir / "qemu-system-x86_64").symlink_to(Path(sys.executable).parent / "cx3-qemu")
    env = {**os.environ, "CX3_QEMU": str(qemu.binary), "CX3_DIR": str(card_dir)}
    job = tuxlava_job(kernel, rootfs)
    assert job["device_type"] == "qemu" and job["context"]["arch"] == "x86_64"
    # This QEMU takes its firmware from Debian's packages (seabios, ipxe); LAVA's finds its own.
    job["context"]["extra_options"] += [f"-L {d}" for d in qemu.firmware_dirs]
    path = f"{bin_dir}:{os.environ['PATH']}"
    command = lava_command(job, path, {"kernel": kernel, "rootfs": rootfs})
    assert command[0] == str(bin_dir / "qemu-system-x86_64")
    memory = command[command.index("-m") + 1]
    vm = subprocess.Popen(
        [*command, "-S", "-qmp", f"unix:{mon},server=on,wait=off"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        env=env,
    )
    try:
        ids = pci_ids_once_up(vm, mon)
        assert (0x15B3, 0x1003) in ids, ids
        with ControlClient(card_dir / "cx3.ctl") as control:
            assert "counts" in control.state()  # the card's control socket answers
        memdev = qmp(mon, "query-memdev")
        assert isinstance(memdev, list)
        assert [(m["size"], m["share"]) for m in memdev] == [(_bytes(memory), True)]
        qmp(mon, "quit")
        assert vm.wait(timeout=TIMEOUT) == 0
    finally:
        if vm.poll() is None:
            vm.kill()
            vm.wait()
    # The card stops with its QEMU: the disconnect or, if QEMU exits first, SIGTERM.
    log = card_dir / "cx3-device.log"
    deadline = time.monotonic() + TIMEOUT
    while _card_running(card_dir) or "stopped" not in log.read_text():
        assert time.monotonic() < deadline, log.read_text()[-2000:]
        time.sleep(0.1)


def _card_running(card_dir: Path) -> bool:
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            if str(card_dir).encode() in cmdline.read_bytes():
                return True
    return False


def _bytes(size: str) -> int:
    return int(size[:-1]) << {"M": 20, "G": 30}[size[-1]]
