"""The QEMU command line and the pure helpers around one VM (no QEMU is started)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from rig.errors import MachineError
from rig.vm.cmdline import Modprobe
from rig.vm.machine import (
    BootTimes,
    MachineConfig,
    RuntimePaths,
    parse_usernet_port,
    qemu_command,
    vfio_user_device,
)
from rig.vm.ssh import SshIdentity


@dataclass(frozen=True)
class FakeQemu:
    binary: Path = Path("/opt/qemu/bin/qemu-system-x86_64")
    firmware_dirs: tuple[Path, ...] = (Path("/usr/share/seabios"), Path("/usr/share/qemu"))
    version: str = "10.2.0"


def config(**options: object) -> MachineConfig:
    base: dict[str, object] = dict(
        qemu=FakeQemu(),
        kernel=Path("/c/vmlinuz"),
        initrd=Path("/c/initrd.cpio"),
        rootfs=Path("/c/rootfs.img"),
        ssh=SshIdentity(Path("/c/id"), "ssh-ed25519 AAAA x"),
        log_dir=Path("/logs"),
    )
    base.update(options)
    return MachineConfig(**base)  # type: ignore[arg-type]


PATHS = RuntimePaths.under(Path("/tmp/rig-vm-x"))


def option(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def test_fixed_options() -> None:
    argv = qemu_command(config(), PATHS)
    assert argv[0] == "/opt/qemu/bin/qemu-system-x86_64"
    assert option(argv, "-machine") == ["q35,accel=tcg,memory-backend=mem,hpet=off"]
    for flag in ("-nodefaults", "-no-user-config", "-no-reboot"):
        assert flag in argv
    assert option(argv, "-display") == ["none"]
    assert option(argv, "-L") == ["/usr/share/seabios", "/usr/share/qemu"]


def test_guest_ram_is_a_shared_memfd_of_the_configured_size() -> None:
    argv = qemu_command(config(memory_mib=2048, smp=2), PATHS)
    assert option(argv, "-object") == ["memory-backend-memfd,id=mem,size=2048M,share=on"]
    assert option(argv, "-m") == ["2048M"]
    assert option(argv, "-smp") == ["2"]


def test_no_firmware_dirs_means_no_dash_L() -> None:
    argv = qemu_command(config(qemu=FakeQemu(firmware_dirs=())), PATHS)
    assert "-L" not in argv


def test_ssh_forward_binds_loopback_on_a_kernel_chosen_port() -> None:
    (netdev,) = option(qemu_command(config(), PATHS), "-netdev")
    assert "hostfwd=tcp:127.0.0.1:0-:22" in netdev.split(",")


def test_root_disk_is_copy_on_write_and_commas_escaped() -> None:
    argv = qemu_command(config(rootfs=Path("/odd,dir/rootfs.img")), PATHS)
    (drive,) = option(argv, "-drive")
    assert "snapshot=on" in drive.split(",")
    assert "file.filename=/odd,,dir/rootfs.img" in drive
    assert "virtio-blk-pci,drive=root" in option(argv, "-device")


def test_console_and_qmp_connect_to_the_rigs_sockets() -> None:
    argv = qemu_command(config(), PATHS)
    chardevs = option(argv, "-chardev")
    assert "socket,id=console,path=/tmp/rig-vm-x/console.sock" in chardevs
    assert "socket,id=qmp,path=/tmp/rig-vm-x/qmp.sock" in chardevs
    assert option(argv, "-serial") == ["chardev:console"]
    assert option(argv, "-mon") == ["chardev=qmp,mode=control"]
    # Client mode: the rig listens, so QEMU must not be told to be the server.
    assert not any("server" in c for c in chardevs)


def test_kernel_initrd_and_cmdline() -> None:
    argv = qemu_command(
        config(modprobe=(Modprobe("mlx4_core", ("msi_x=1",)),), kernel_args=("quiet",)), PATHS
    )
    assert option(argv, "-kernel") == ["/c/vmlinuz"]
    assert option(argv, "-initrd") == ["/c/initrd.cpio"]
    (append,) = option(argv, "-append")
    assert "console=ttyS0" in append
    assert 'rig.modprobe="mlx4_core msi_x=1"' in append
    assert append.endswith(" quiet")


def test_vfio_user_devices_in_order_as_json() -> None:
    argv = qemu_command(config(vfio_user_sockets=(Path("/s/a.sock"), Path("/s/b.sock"))), PATHS)
    devices = [json.loads(d) for d in option(argv, "-device") if d.startswith("{")]
    assert devices == [
        {"driver": "vfio-user-pci", "id": "cx0", "socket": {"path": "/s/a.sock", "type": "unix"}},
        {"driver": "vfio-user-pci", "id": "cx1", "socket": {"path": "/s/b.sock", "type": "unix"}},
    ]
    assert vfio_user_device(3, Path("/x"), config()) == (
        '{"driver":"vfio-user-pci","id":"cx3","socket":{"path":"/x","type":"unix"}}'
    )


def test_posted_writes_ask_qemu_to_post_despite_the_mapped_bar() -> None:
    argv = qemu_command(config(vfio_user_sockets=(Path("/s/a.sock"),), posted_writes=True), PATHS)
    (device,) = [json.loads(d) for d in option(argv, "-device") if d.startswith("{")]
    assert device["x-posted-writes-with-mmap"] is True


def test_the_gateway_address_is_a_posted_config_dword() -> None:
    argv = qemu_command(
        config(vfio_user_sockets=(Path("/s/a.sock"),), posted_config_dword=0x58), PATHS
    )
    (device,) = [json.loads(d) for d in option(argv, "-device") if d.startswith("{")]
    assert device["x-posted-config-dword"] == 0x58
    bare = qemu_command(config(vfio_user_sockets=(Path("/s/a.sock"),)), PATHS)
    assert "x-posted-config-dword" not in option(bare, "-device")[-1]


def test_the_hcr_parameters_are_a_posted_bar0_window() -> None:
    argv = qemu_command(
        config(vfio_user_sockets=(Path("/s/a.sock"),), posted_bar0=(0x80680, 0x18)), PATHS
    )
    (device,) = [json.loads(d) for d in option(argv, "-device") if d.startswith("{")]
    assert (device["x-posted-bar0-offset"], device["x-posted-bar0-size"]) == (0x80680, 0x18)
    bare = qemu_command(config(vfio_user_sockets=(Path("/s/a.sock"),)), PATHS)
    assert "x-posted-bar0" not in option(bare, "-device")[-1]


def test_an_intx_card_is_mapped_again_after_its_interrupt_is_answered() -> None:
    argv = qemu_command(config(vfio_user_sockets=(Path("/s/a.sock"),), intx_remap_ms=1), PATHS)
    (device,) = [json.loads(d) for d in option(argv, "-device") if d.startswith("{")]
    assert device["x-intx-mmap-timeout-ms"] == 1
    bare = qemu_command(config(vfio_user_sockets=(Path("/s/a.sock"),)), PATHS)
    assert "x-intx-mmap-timeout-ms" not in option(bare, "-device")[-1]


def test_a_lockstep_card_has_its_interrupts_delivered_after_each_access() -> None:
    argv = qemu_command(
        config(vfio_user_sockets=(Path("/s/a.sock"),), irqs_after_access=True), PATHS
    )
    (device,) = [json.loads(d) for d in option(argv, "-device") if d.startswith("{")]
    assert device["x-irqs-after-access"] is True
    bare = qemu_command(config(vfio_user_sockets=(Path("/s/a.sock"),)), PATHS)
    assert "x-irqs-after-access" not in option(bare, "-device")[-1]


def test_extra_qemu_args_come_last() -> None:
    argv = qemu_command(config(qemu_args=("-cpu", "max")), PATHS)
    assert argv[-2:] == ["-cpu", "max"]


USERNET = """Hub -1 (net0):
  Protocol[State]    FD  Source Address  Port   Dest. Address  Port RecvQ SendQ
  TCP[HOST_FORWARD]   9       127.0.0.1 37609       10.0.2.15    22     0     0
  TCP[ESTABLISHED]   14       10.0.2.15 52000        10.0.2.2  8080     0     0
"""


def test_usernet_port() -> None:
    assert parse_usernet_port(USERNET) == 37609


def test_usernet_without_forward() -> None:
    with pytest.raises(MachineError, match="no host forward"):
        parse_usernet_port(USERNET, guest_port=2222)


def test_config_for_guest() -> None:
    from rig.provision.guest import GuestImage
    from rig.provision.kernel import GuestKernel
    from rig.provision.rootfs import RootFs
    from rig.provision.sshkeys import ClientKey

    guest = GuestImage(
        GuestKernel(Path("/k/vmlinuz"), Path("/k/lib/modules/6.1"), "6.1", "debian:x=1"),
        Path("/i/initrd.cpio"),
        RootFs(Path("/r/rootfs.img"), "ssh-ed25519 HOST g"),
        ClientKey(Path("/s/id_ed25519"), "ssh-ed25519 CLIENT rig"),
    )
    c = MachineConfig.for_guest(FakeQemu(), guest, Path("/logs"), memory_mib=512)
    assert (c.kernel, c.initrd, c.rootfs) == (
        Path("/k/vmlinuz"),
        Path("/i/initrd.cpio"),
        Path("/r/rootfs.img"),
    )
    assert c.ssh == SshIdentity(Path("/s/id_ed25519"), "ssh-ed25519 HOST g")
    assert c.memory_mib == 512 and c.smp == 1


def test_boot_times_summary() -> None:
    t = BootTimes(launched=10.0, first_output=11.0, kernel_done=13.5, ready=15.0, ssh=15.5)
    assert t.summary() == "5.50 s (firmware+load 1.00 s, kernel 2.50 s, init 1.50 s, ssh 0.50 s)"
