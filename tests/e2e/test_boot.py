"""Boot the real guest (Debian's kernel, our initramfs and root fs) under QEMU/TCG."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from rig.provision.guest import ensure_guest
from rig.provision.localqemu import qemu_at
from rig.provision.qemu import find_qemu
from rig.vm.machine import Machine, MachineConfig, QemuInstall

pytestmark = pytest.mark.e2e


def any_qemu() -> QemuInstall:
    """Booting needs no vfio-user: the rig's QEMU if one is ready, else the system's."""
    found = find_qemu()
    if found is not None:
        return found
    system = shutil.which("qemu-system-x86_64")
    if system is None:
        pytest.fail("no QEMU: run `rig setup` or install qemu-system-x86", pytrace=False)
    return qemu_at(Path(system))


def test_boot_and_uname_over_ssh(tmp_path: Path) -> None:
    guest = ensure_guest()
    config = MachineConfig.for_guest(any_qemu(), guest, tmp_path / "logs")
    with Machine(config) as machine:
        machine.launch()
        ssh = machine.wait_ready(timeout=180)
        result = ssh.run("uname -r", timeout=60)
    assert (result.status, result.stdout.strip()) == (0, guest.kernel.release)
    assert machine.exit_status == 0, "the guest should power off cleanly"
    assert "rig-guest: ready" in (tmp_path / "logs" / "console.log").read_text()
