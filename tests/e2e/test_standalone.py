"""The card beside someone else's QEMU: `cx3-device` on its own prints the arguments that
attach it, a plain QEMU command line built from that output finds 15b3:1003 on its PCI bus
(QMP query-pci, the guest paused before its firmware runs: no kernel needed), the control
socket answers, and the model exits 0 once that QEMU goes away."""

from __future__ import annotations

import json
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from cx3.client import ControlClient
from rig.provision.qemu import ensure_qemu
from vfio_user.qemu import check_qemu

pytestmark = pytest.mark.e2e

TIMEOUT = 30.0


def qmp(path: Path, command: str) -> object:
    """One QMP command on a fresh connection (capabilities negotiated first)."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(TIMEOUT)
        s.connect(str(path))
        f = s.makefile("rw")
        json.loads(f.readline())  # the greeting
        for name in ("qmp_capabilities", command):
            f.write(json.dumps({"execute": name}) + "\n")
            f.flush()
            while "return" not in (reply := json.loads(f.readline())):
                assert "error" not in reply, reply  # events are skipped
        return reply["return"]


def pci_ids_once_up(vm: subprocess.Popen[Any], mon: Path) -> list[tuple[int, int]]:
    """The (vendor, device) ids QEMU lists, once its QMP socket exists (QEMU creates it when
    it is up; there is no event to wait on before a QMP connection)."""
    deadline = time.monotonic() + TIMEOUT
    while not mon.exists():
        assert vm.poll() is None, f"QEMU exited {vm.returncode}: {vm.args!r}"
        assert time.monotonic() < deadline, "no QMP socket"
        time.sleep(0.05)
    buses = qmp(mon, "query-pci")
    assert isinstance(buses, list)
    return [(d["id"]["vendor"], d["id"]["device"]) for bus in buses for d in bus["devices"]]


def test_a_plain_qemu_attaches_the_standalone_card(tmp_path: Path) -> None:
    qemu = ensure_qemu()
    assert check_qemu(qemu.binary) is None
    sock, ctl, mon = tmp_path / "cx3.sock", tmp_path / "cx3.ctl", tmp_path / "qmp.sock"
    card = ["--socket", str(sock), "--control", str(ctl), "--print-qemu-args", "--memory", "256M"]
    model = subprocess.Popen(
        [sys.executable, "-m", "cx3", *card, "--exit-with-client"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert model.stdout is not None
        assert model.stdout.readline() == "ready\n"
        attach = shlex.split(model.stdout.readline())
        assert "vfio-user-pci" in " ".join(attach)
        firmware = [arg for d in qemu.firmware_dirs for arg in ("-L", str(d))]
        plain = ["-M", "q35,accel=tcg", "-S", "-nodefaults", "-display", "none"]
        vm = subprocess.Popen(
            [
                str(qemu.binary),
                *firmware,
                *plain,
                "-qmp",
                f"unix:{mon},server=on,wait=off",
                *attach,
            ],
            stdin=subprocess.DEVNULL,
        )
        try:
            ids = pci_ids_once_up(vm, mon)
            assert (0x15B3, 0x1003) in ids, ids
            with ControlClient(ctl) as control:
                assert "counts" in control.state()  # the control socket answers
            qmp(mon, "quit")
            assert vm.wait(timeout=TIMEOUT) == 0
        finally:
            if vm.poll() is None:
                vm.kill()
                vm.wait()
        assert model.wait(timeout=TIMEOUT) == 0  # --exit-with-client: gone with its QEMU
    finally:
        if model.poll() is None:
            model.kill()
            model.wait()


def test_check_qemu_names_what_is_missing(tmp_path: Path) -> None:
    fake = tmp_path / "qemu-system-x86_64"
    fake.write_text("#!/bin/sh\necho 'QEMU emulator version 9.2.0'\n")
    fake.chmod(0o755)
    run = subprocess.run(
        [sys.executable, "-m", "cx3", "--socket", "x", "--control", "y", "--check-qemu", str(fake)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [
        f"{fake} is QEMU 9.2; vfio-user-pci needs QEMU >= 10.1"
    ]
