"""Boot the real guest (Debian's kernel, our initramfs and root fs) under QEMU/TCG."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from rig.cache import file_digest
from rig.provision.guest import ensure_guest
from rig.provision.localqemu import qemu_at
from rig.provision.qemu import find_qemu
from rig.vm.cmdline import Modprobe
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


# What Debian's kernel packages ship in lib/modules/<release>/ besides the modules: the
# indexes (modules.dep, its .bin, aliases, symbols, ...) are depmod's, made by the postinst.
SHIPPED = ("kernel", "modules.order", "modules.builtin", "modules.builtin.modinfo")


def tree_state(directory: Path) -> dict[str, tuple[str, int, int]]:
    """Every entry under `directory`: content digest (files), mode and mtime."""
    state = {}
    for path in sorted(directory.rglob("*")):
        st = path.lstat()
        digest = file_digest(path) if path.is_file() and not path.is_symlink() else ""
        state[str(path.relative_to(directory))] = (digest, st.st_mode, st.st_mtime_ns)
    return state


def test_boot_a_kernel_unpacked_without_modules_dep(tmp_path: Path) -> None:
    """A kernel directory as `dpkg-deb -x` leaves Debian's packages (boot/vmlinuz-<release>,
    usr/lib/modules/<release>/, no modules.dep) boots, and the directory is only read."""
    packaged = ensure_guest().kernel
    unpacked = tmp_path / "unpacked"
    (unpacked / "boot").mkdir(parents=True)
    shutil.copy2(packaged.vmlinuz, unpacked / "boot" / f"vmlinuz-{packaged.release}")
    modules = unpacked / "usr" / "lib" / "modules" / packaged.release
    for name in SHIPPED:
        source = packaged.modules_dir / name
        if source.is_dir():
            shutil.copytree(source, modules / name)
        elif source.is_file():
            shutil.copy2(source, modules / name)
    before = tree_state(unpacked)

    guest = ensure_guest(str(unpacked))

    assert tree_state(unpacked) == before
    assert not guest.kernel.modules_dir.is_relative_to(unpacked)
    assert (guest.kernel.modules_dir / "modules.dep").is_file()
    config = MachineConfig.for_guest(
        any_qemu(), guest, tmp_path / "logs", modprobe=(Modprobe("mlx4_core"),)
    )
    with Machine(config) as machine:
        machine.launch()
        ssh = machine.wait_ready(timeout=180)
        # modprobe in the guest reads the private copy's indexes: mlx4_core and its
        # dependencies were loaded by name at boot.
        result = ssh.run("uname -r; grep -c '^mlx4_core ' /proc/modules", timeout=60)
    assert (result.status, result.stdout.split()) == (0, [packaged.release, "1"])
    assert tree_state(unpacked) == before
