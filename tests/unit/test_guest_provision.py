"""Pure parts of guest provisioning: module metadata, kernel choice, cpio, cache keys."""

from __future__ import annotations

import io
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest

from rig.cache import cache_key
from rig.errors import ProvisionError
from rig.provision import apt
from rig.provision.cpio import CpioWriter
from rig.provision.initramfs import kernel_fingerprint
from rig.provision.kernel import GuestKernel, KernelSpec
from rig.provision.kmod import ModuleIndex, bzimage_release, config_value, module_name
from rig.provision.rootfs import recipe_inputs
from rig.provision.sshkeys import ClientKey

VIRTIO = "kernel/drivers/virtio"
MODULES_DEP = f"""\
{VIRTIO}/virtio_pci.ko: {VIRTIO}/virtio_pci_legacy_dev.ko {VIRTIO}/virtio.ko
kernel/drivers/virtio/virtio_pci_legacy_dev.ko:
kernel/drivers/virtio/virtio.ko:
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko
kernel/fs/ext4/ext4.ko.xz: kernel/fs/jbd2/jbd2.ko.xz
kernel/fs/jbd2/jbd2.ko.xz:
kernel/crypto/crc32c_generic.ko.xz:
"""


def test_module_name() -> None:
    assert module_name("kernel/fs/ext4/ext4.ko.xz") == "ext4"
    assert module_name("kernel/x/virtio-rng.ko") == "virtio_rng"


def test_load_order_puts_dependencies_first_once() -> None:
    index = ModuleIndex.parse(MODULES_DEP)
    assert index.load_order(["virtio_pci", "virtio_blk"]) == [
        "kernel/drivers/virtio/virtio_pci_legacy_dev.ko",
        "kernel/drivers/virtio/virtio.ko",
        "kernel/drivers/virtio/virtio_pci.ko",
        "kernel/drivers/block/virtio_blk.ko",
    ]


def test_builtins_are_skipped_and_softdeps_loaded_first() -> None:
    index = ModuleIndex.parse(
        MODULES_DEP,
        "kernel/drivers/virtio/virtio.ko\n",
        "softdep ext4 pre: crc32c_generic missing_one post: foo\n",
    )
    assert index.load_order(["virtio_blk", "ext4"]) == [
        "kernel/drivers/block/virtio_blk.ko",
        "kernel/crypto/crc32c_generic.ko.xz",
        "kernel/fs/jbd2/jbd2.ko.xz",
        "kernel/fs/ext4/ext4.ko.xz",
    ]
    assert index.has("virtio") and index.has("ext4") and not index.has("mlx4_core")


def test_missing_module_is_a_clear_error() -> None:
    with pytest.raises(ProvisionError, match="no module mlx4_core"):
        ModuleIndex.parse(MODULES_DEP).load_order(["mlx4_core"])


def test_config_value() -> None:
    text = "CONFIG_NET_DEVLINK=y\n# CONFIG_MLX4_EN is not set\nCONFIG_MLX4_CORE=m\n"
    assert config_value(text, "NET_DEVLINK") == "y"
    assert config_value(text, "MLX4_CORE") == "m"
    assert config_value(text, "MLX4_EN") is None


def fake_bzimage(version: str) -> bytes:
    image = bytearray(0x1000)
    image[0x202:0x206] = b"HdrS"
    image[0x20E:0x210] = (0x800 - 0x200).to_bytes(2, "little")
    text = f"{version} (builder@host) #1 SMP".encode() + b"\0"
    image[0x800 : 0x800 + len(text)] = text
    return bytes(image)


def test_bzimage_release() -> None:
    assert bzimage_release(fake_bzimage("6.1.0-56-cloud-amd64")) == "6.1.0-56-cloud-amd64"
    assert bzimage_release(b"\0" * 0x1000) is None


def test_kernel_spec_parse_directory(tmp_path: Path) -> None:
    (tmp_path / "bzImage").write_bytes(fake_bzimage("6.6.0-rig"))
    modules = tmp_path / "lib" / "modules" / "6.6.0-rig"
    modules.mkdir(parents=True)
    assert KernelSpec.parse(str(tmp_path)) == KernelSpec(
        bzimage=(tmp_path / "bzImage").resolve(), modules_dir=modules.resolve()
    )


def test_kernel_fingerprint(tmp_path: Path) -> None:
    deb = GuestKernel(Path("/x/vmlinuz"), Path("/x/lib/modules/r"), "r", "debian:pkg=1")
    assert kernel_fingerprint(deb) == "debian:pkg=1"
    (tmp_path / "bzImage").write_bytes(b"kernel")
    modules = tmp_path / "mods"
    modules.mkdir()
    (modules / "a.ko").write_bytes(b"a")
    user = GuestKernel(tmp_path / "bzImage", modules, "r", "user:x")
    first = kernel_fingerprint(user)
    (modules / "a.ko").write_bytes(b"ab")
    assert kernel_fingerprint(user) != first
    assert first.startswith("user:")


def test_rootfs_key_follows_client_key_and_recipe() -> None:
    a = recipe_inputs(ClientKey(Path("/k"), "ssh-ed25519 AAAA1 rig"))
    b = recipe_inputs(ClientKey(Path("/k"), "ssh-ed25519 AAAA2 rig"))
    assert cache_key(a) != cache_key(b)
    same_key_elsewhere = ClientKey(Path("/other"), "ssh-ed25519 AAAA1 x")
    assert cache_key(a) == cache_key(recipe_inputs(same_key_elsewhere))
    assert "openssh-server" in a["packages"]  # type: ignore[operator]
    assert a["pyroute2"] == "0.9.7"


def read_cpio(data: bytes) -> dict[str, tuple[int, bytes, int, int]]:
    """name -> (mode, data, rdevmajor, rdevminor), checking newc alignment as the kernel does."""
    entries: dict[str, tuple[int, bytes, int, int]] = {}
    pos = 0
    while True:
        assert data[pos : pos + 6] == b"070701" and pos % 4 == 0
        fields = [int(data[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(13)]
        namesize, filesize = fields[11], fields[6]
        name = data[pos + 110 : pos + 110 + namesize - 1].decode()
        pos += 110 + namesize
        pos += -pos % 4
        body = data[pos : pos + filesize]
        pos += filesize
        pos += -pos % 4
        if name == "TRAILER!!!":
            assert pos == len(data)
            return entries
        entries[name] = (fields[1], body, fields[9], fields[10])


def test_cpio_writer(tmp_path: Path) -> None:
    src = tmp_path / "tree"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "m.ko").write_bytes(b"module!")
    (src / "link").symlink_to("sub/m.ko")
    out = io.BytesIO()
    cpio = CpioWriter(out)
    cpio.directory("dev")
    cpio.char_device("dev/console", 5, 1)
    cpio.file("init", b"#!/bin/sh\n", 0o755)
    cpio.tree("lib/modules/r", src)
    cpio.close()
    entries = read_cpio(out.getvalue())
    assert entries["init"][0] == stat.S_IFREG | 0o755 and entries["init"][1] == b"#!/bin/sh\n"
    assert entries["dev/console"][0] == stat.S_IFCHR | 0o600
    assert entries["dev/console"][2:] == (5, 1)
    assert entries["lib/modules/r/sub/m.ko"][1] == b"module!"
    assert stat.S_ISLNK(entries["lib/modules/r/link"][0])
    assert entries["lib/modules/r/link"][1] == b"sub/m.ko"
    names = list(entries)
    assert names.index("lib/modules/r/sub") < names.index("lib/modules/r/sub/m.ko")


def test_cpio_rejects_duplicates() -> None:
    cpio = CpioWriter(io.BytesIO())
    cpio.directory("bin")
    with pytest.raises(ValueError, match="duplicate"):
        cpio.directory("bin/")


def test_mounts_below_deepest_first() -> None:
    from rig.provision.rootfs import mounts_below

    mountinfo = (
        "22 1 0:21 / /proc rw - proc proc rw\n"
        "90 1 0:5 /null /c/stage/tree/dev/null rw - devtmpfs udev rw\n"
        "91 1 0:20 / /c/stage/tree/sys rw - sysfs sysfs rw\n"
        "92 91 0:30 / /c/stage/tree/sys/fs/cgroup rw - cgroup2 cgroup2 rw\n"
        "93 1 0:31 / /c/stage/tree2 rw - tmpfs tmpfs rw\n"
        "94 1 0:32 / /c/stage/tree/with\\040blank rw - tmpfs tmpfs rw\n"
    )
    assert mounts_below(Path("/c/stage/tree"), mountinfo) == [
        Path("/c/stage/tree/sys/fs/cgroup"),
        Path("/c/stage/tree/dev/null"),
        Path("/c/stage/tree/sys"),
        Path("/c/stage/tree/with blank"),
    ]


def test_guest_pyroute2_is_the_rigs_pin() -> None:
    import tomllib

    from rig.provision.rootfs import PYROUTE2_VERSION

    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    assert f"pyroute2=={PYROUTE2_VERSION}" in pyproject["project"]["dependencies"]


def test_missing_packages_asks_dpkg_once_and_names_only_the_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # dpkg itself is installed on any Debian host; the other name is no package at all.
    monkeypatch.setattr(apt, "_installed", set())
    assert apt.missing_packages(["dpkg", "rig-no-such-package", "dpkg"]) == ["rig-no-such-package"]
    assert apt._installed == {"dpkg"}
    calls: list[list[str]] = []
    real_run = subprocess.run

    def counted(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        calls.append(cmd)
        return real_run(cmd, **kw)

    monkeypatch.setattr(subprocess, "run", counted)
    assert apt.missing_packages(["dpkg"]) == [] and calls == []  # remembered: no dpkg-query
    assert apt.missing_packages(["rig-no-such-package"]) == ["rig-no-such-package"]
    assert len(calls) == 1  # the missing one is asked again: it may have been installed since
