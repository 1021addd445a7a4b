"""Saved VMs (rig.vm.saved) without QEMU: what keys one, and how a damaged one is caught."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from rig.cache import entry
from rig.errors import UsageError
from rig.provision.locking import building
from rig.vm import saved as saved_module
from rig.vm.cmdline import Modprobe
from rig.vm.machine import HOTPLUG_BUS, MachineConfig, qemu_command
from rig.vm.saved import (
    DISK,
    KEEP,
    KEEP_ENV,
    SEAL,
    STATE,
    GuestService,
    SavedVm,
    SavedVmError,
    data_digest,
    evict,
    kept,
    prune_stale,
    saved_inputs,
)
from rig.vm.ssh import SshIdentity
from tests.unit.test_machine_command import PATHS, FakeQemu, option


@pytest.fixture
def base(tmp_path: Path) -> MachineConfig:
    files = {}
    for name in ("qemu-system-x86_64", "vmlinuz", "initrd.cpio", "rootfs.img"):
        files[name] = tmp_path / name
        files[name].write_bytes(name.encode())
    return MachineConfig(
        qemu=FakeQemu(binary=files["qemu-system-x86_64"]),
        kernel=files["vmlinuz"],
        initrd=files["initrd.cpio"],
        rootfs=files["rootfs.img"],
        ssh=SshIdentity(tmp_path / "id", "ssh-ed25519 AAAA x"),
        log_dir=tmp_path / "logs",
    )


def test_the_key_follows_what_shapes_the_guest(base: MachineConfig) -> None:
    key = saved_inputs(base)
    for changed in (
        replace(base, memory_mib=2048),
        replace(base, kernel_args=("rig.netup",)),
        # The saved guest's init loaded them: msi_x=0 is another saved VM.
        replace(base, modprobe=(Modprobe("mlx4_core", ("msi_x=0",)),)),
        replace(base, qemu_args=("-icount", "shift=auto")),
        replace(base, qemu=FakeQemu(binary=base.qemu.binary, version="10.2.3")),
    ):
        assert saved_inputs(changed) != key, changed
    os.utime(base.initrd, ns=(1, 1))  # the same path, rebuilt
    assert saved_inputs(base) != key


def test_the_key_follows_the_services_the_guest_runs(base: MachineConfig, tmp_path: Path) -> None:
    program = tmp_path / "agent.py"
    program.write_text("print('v1')\n")
    service = GuestService("agent", program, "/run/rig/agent.py", "agent &", 7011)
    key = saved_inputs(base, (service,))
    assert key != saved_inputs(base)
    assert saved_inputs(base, (replace(service, start="agent --other &"),)) != key
    program.write_text("print('v2')\n")  # a new agent: a new save, not the old one's agent
    assert saved_inputs(base, (service,)) != key


def test_the_key_leaves_out_what_each_rig_has_of_its_own(base: MachineConfig) -> None:
    key = saved_inputs(base)
    own = replace(
        base,
        name="other",
        log_dir=Path("/elsewhere"),
        kernel_args=("rig.sshkey=AAAAC3NzaC1lZDI1NTE5AAAAIB",),
        vfio_user_sockets=(Path("/tmp/rig-run-1/cx3.sock"),),
    )
    assert saved_inputs(own) == key


def test_command_line_of_a_save_and_a_restore(base: MachineConfig) -> None:
    plain = qemu_command(base, PATHS)
    assert "-incoming" not in plain
    assert not any(a.startswith("pcie-root-port") for a in option(plain, "-device"))
    argv = qemu_command(replace(base, hotplug_slot=True, incoming=True), PATHS)
    assert f"pcie-root-port,id={HOTPLUG_BUS},chassis=1" in option(argv, "-device")
    assert option(argv, "-incoming") == ["defer"]
    assert option(plain, "-drive")[0].endswith("snapshot=on")
    writable = qemu_command(replace(base, rootfs_writable=True), PATHS)
    assert option(writable, "-drive")[0].endswith("snapshot=off")


def sealed(tmp_path: Path) -> SavedVm:
    """A saved VM's files as ensure_saved leaves them (with made-up contents)."""
    saved = SavedVm(entry("savedvm", "k", {"x": 1}, root=tmp_path))
    saved.entry.path.mkdir(parents=True)
    saved.state.write_bytes(b"\x01" * 4096)
    saved.disk.write_bytes(b"disk")

    def stamp(p: Path) -> dict[str, int]:
        return {"size": p.stat().st_size, "mtime_ns": p.stat().st_mtime_ns}

    seal = {
        STATE: {"stamp": stamp(saved.state), "sha256": data_digest(saved.state)},
        DISK: {"stamp": stamp(saved.disk)},
    }
    (saved.entry.path / SEAL).write_text(json.dumps(seal))
    return saved


def test_a_sound_save_passes_both_checks(tmp_path: Path) -> None:
    saved = sealed(tmp_path)
    assert saved.problem() is None
    saved.verifier().check()


@pytest.mark.parametrize("name", [STATE, DISK])
def test_a_file_written_after_the_seal_is_caught_cheaply(tmp_path: Path, name: str) -> None:
    saved = sealed(tmp_path)
    with (saved.entry.path / name).open("ab") as f:
        f.write(b"x")
    assert saved.problem() == f"{name} changed since it was saved"


def test_a_flipped_byte_with_the_same_size_and_time_fails_the_digest(tmp_path: Path) -> None:
    saved = sealed(tmp_path)
    st = saved.state.stat()
    with saved.state.open("r+b") as f:
        f.seek(1000)
        f.write(b"\x02")
    os.utime(saved.state, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert saved.problem() is None  # the cheap check cannot see it ...
    with pytest.raises(SavedVmError, match="corrupt"):
        saved.verifier().check()  # ... the digest does


def test_a_verified_state_is_not_hashed_again_until_it_changes(tmp_path: Path) -> None:
    saved = sealed(tmp_path)
    first = saved.verifier()
    assert not first.verified
    first.check()
    again = saved.verifier()
    assert again.verified  # the same file, untouched since its digest matched
    again.check()
    st = saved.state.stat()
    with saved.state.open("r+b") as f:  # a flipped byte, its size and mtime put back
        f.seek(1000)
        f.write(b"\x02")
    os.utime(saved.state, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = saved.verifier()
    assert not after.verified  # its ctime moved: the digest runs again ...
    with pytest.raises(SavedVmError, match="corrupt"):
        after.check()  # ... and sees it
    assert not saved.verifier().verified  # a mismatch records nothing


def test_a_state_replaced_by_a_copy_of_itself_is_hashed_again(tmp_path: Path) -> None:
    saved = sealed(tmp_path)
    saved.verifier().check()
    copy = tmp_path / "copy"
    shutil.copy2(saved.state, copy)
    os.replace(copy, saved.state)  # same bytes, size and mtime; another file
    again = saved.verifier()
    assert not again.verified
    again.check()


def test_a_cache_it_cannot_write_still_checks_every_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    saved = sealed(tmp_path)

    def refused(path: Path, text: str) -> None:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(saved_module, "write_atomically", refused)
    saved.verifier().check()  # the record is refused, the check is not
    assert not saved.verifier().verified


def test_a_missing_seal_is_a_problem(tmp_path: Path) -> None:
    saved = sealed(tmp_path)
    (saved.entry.path / SEAL).unlink()
    assert (saved.problem() or "").startswith("unreadable")


def test_the_data_digest_skips_holes_but_sees_where_data_is(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    for path, at in ((one, 1 << 20), (two, 2 << 20)):
        with path.open("wb") as f:
            f.truncate(8 << 20)
            f.seek(at)
            f.write(b"page" * 1024)
    assert data_digest(one) != data_digest(two)
    assert data_digest(one) == data_digest(one)


def test_saved_vms_of_changed_files_are_pruned(tmp_path: Path, base: MachineConfig) -> None:
    def built(config: MachineConfig) -> Path:
        e = entry("savedvm", "k", saved_inputs(config), root=tmp_path / "cache")
        with e.build() as stage:
            (stage / STATE).write_bytes(b"state")
        return e.path

    other_shape = built(replace(base, memory_mib=2048))
    old = built(base)
    os.utime(base.kernel, ns=(1, 1))  # the kernel rebuilt in place: `old` is stale
    current = entry("savedvm", "k", saved_inputs(base), root=tmp_path / "cache")
    with current.build() as stage:
        (stage / STATE).write_bytes(b"state")
    prune_stale(current)
    assert not old.exists()
    assert not other_shape.exists()  # booted from the same old kernel
    assert current.path.exists()
    kept = built(replace(base, memory_mib=2048))  # another shape of the current files
    prune_stale(current)
    assert kept.exists() and current.path.exists()


def test_the_least_recently_used_saved_vms_go_beyond_the_budget(
    tmp_path: Path, base: MachineConfig
) -> None:
    """Six saved VMs, a budget of three: the three used longest ago go, except one a rig
    holds the build lock of; the current one stays whatever its time."""
    paths = []
    for n, memory in enumerate((512, 640, 768, 896, 1024, 1152)):
        e = entry(
            "savedvm",
            f"k{n % 2}",
            saved_inputs(replace(base, memory_mib=memory)),
            root=tmp_path / "cache",
        )
        with e.build() as stage:
            (stage / STATE).write_bytes(b"state")
        os.utime(e.path, (1000 + n, 1000 + n))  # used in this order
        paths.append(e)
    current = paths[0]  # the oldest, but the one this rig uses
    locked = paths[1]
    with building(locked):
        evict(current, keep=3)
    assert [e.path.exists() for e in paths] == [True, True, False, True, True, True]
    evict(current, keep=3)  # the lock is free now: 1 goes, 0 stays
    assert [e.path.exists() for e in paths] == [True, False, False, True, True, True]


def test_a_bad_budget_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEEP_ENV, "0")
    with pytest.raises(UsageError, match=r"^\$RIG_SAVED_VMS '0': a whole number of at least 1$"):
        kept()
    monkeypatch.setenv(KEEP_ENV, "4")
    assert kept() == 4
    monkeypatch.delenv(KEEP_ENV)
    assert kept() == KEEP
