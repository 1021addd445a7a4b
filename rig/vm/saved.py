"""Saved VMs: a guest booted once, to "ready", and saved; each later VM starts from the save.

The card's state lives in the device model's process, which no QEMU save holds (QEMU 10.2
saves a VM with a vfio-user-pci card without complaint, but a restored driver would meet a
fresh model), so a saved VM has no card: it boots with its modules loaded and an empty PCIe
root port (MachineConfig.hotplug_slot), and the rig plugs the card in after the restore. The
guest writes to its root disk while it boots, so the saved VM keeps its own copy of the disk
beside the RAM; restored VMs open that copy read-only with a private overlay (snapshot=on).

An entry (<cache>/savedvm/<kernel>-<key>/) is keyed by the QEMU command line that shaped it
(machine, memory, devices, kernel command line with the modules loaded at boot and their
parameters; the rig's own paths, name and SSH key left out), the card watcher, the guest
services it runs (GuestService: the netlink agent), the save format, and the size and time of
every file it booted from, so a change to any of them makes a new one. Its seal records the
state's SHA-256 and both files' size and time: a restore checks the cheap half first and the
digest while QEMU loads and SSH connects (SavedVm.verifier, before the card is plugged in),
unless the state is the very file whose digest matched before (VERIFIED: its inode, size,
mtime and ctime); a state that fails either, or that QEMU refuses, is discarded and rebuilt,
never trusted.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import shlex
import shutil
import subprocess
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rig import settings
from rig.cache import MANIFEST, CacheEntry, entry, write_atomically
from rig.errors import MachineError, RigError
from rig.provision.locking import building, unless_building
from rig.vm.machine import SAVE_CAPABILITIES, Machine, MachineConfig, RuntimePaths, qemu_command

logger = logging.getLogger(__name__)

STATE = "state.bin"
DISK = "disk.img"
SEAL = "seal.json"
# The state file's identity when its digest last matched the seal (Verifier): a restore
# whose state still has it skips the digest (~0.27 s of CPU for 316 MB of data, beside
# QEMU's loading, on every rig). The identity includes the ctime, which user space cannot
# set: any write to the file, or a utime putting its mtime back, moves it.
VERIFIED = "verified.json"
KIND = "savedvm"
# Saved VMs kept, the most recently used: each holds a copy of the root disk and the guest's
# RAM, ~0.5 GB, and every change to QEMU, the kernel, its parameters or the guest's programs
# makes a new one. The e2e suite uses a handful.
KEEP = 10
KEEP_ENV = "RIG_SAVED_VMS"
# The key's stand-in for each VM's private socket directory.
_RUNTIME = RuntimePaths.under(Path("/run/rig-saved"))
_SSHKEY_ARG = re.compile(r" rig\.sshkey=\S+")
# What the saved guest says on its console when the kernel adds the card and when a driver
# binds it, so that the host waits for the line after the hot-plug, with no guest command
# to start: one python3 reading the kernel's uevent socket, started before the save, so it
# listens in every restored guest. Not `busybox uevent sh -c ...`: a shell forked for each
# of a catas reset's dozen uevents kept the guest busy during the reset's sleep (~50 ms of
# host time on the warped clock, docs/clock.md).
_CARD_WATCHER = (
    "import socket\n"
    "s=socket.socket(socket.AF_NETLINK,socket.SOCK_DGRAM,15)\n"  # NETLINK_KOBJECT_UEVENT
    "s.bind((0,1))\n"
    "con=open('/dev/console','w')\n"
    "while True:\n"
    "    f=s.recv(65536).split(b'\\0')\n"  # ACTION@DEVPATH, then KEY=VALUE fields
    "    e=dict(x.decode(errors='replace').split('=',1) for x in f[1:] if b'=' in x)\n"
    "    a=e.get('ACTION')\n"
    "    if (e.get('SUBSYSTEM'),e.get('PCI_ID'))==('pci','15B3:1003') and a in ('add','bind'):\n"
    "        d=e.get('DEVPATH','').rsplit('/',1)[-1]\n"
    "        con.write('rig-guest: card %s %s %s\\n'%(a,d,e.get('DRIVER','')))\n"
    "        con.flush()\n"
)


def card_line(action: str, driver: str = "") -> re.Pattern[str]:
    """The card watcher's line for uevent `action` ("add", "bind") with `driver`."""
    return re.compile(rf"rig-guest: card {action} \S+ {re.escape(driver)}")


CARD_WATCH = (
    f"setsid python3 -c {shlex.quote(_CARD_WATCHER)} < /dev/null > /dev/null 2>&1 & "
    # Saved only once it listens (its netlink socket: uevents, group 1); nothing to await.
    "until grep -qE '^[0-9a-f]+ +15 +[0-9]+ +00000001 ' /proc/net/netlink; do sleep 0.01; done"
)


@dataclass(frozen=True)
class GuestService:
    """A program a saved guest runs from before its save, so that no restored rig waits for
    it to start: uploaded to `remote`, started by `start` (which returns at once), and saved
    only once it listens on 127.0.0.1:`port`. Its file and command are part of the key."""

    name: str
    program: Path
    remote: str
    start: str
    port: int

    def key(self) -> dict[str, Any]:
        digest = hashlib.sha256(self.program.read_bytes()).hexdigest()
        return {"name": self.name, "sha256": digest, "remote": self.remote, "start": self.start}

    def listening(self) -> str:
        """A guest command that returns once the service listens (/proc/net/tcp: its
        loopback address and port, state 0A, LISTEN)."""
        entry = f"0100007F:{self.port:04X} 00000000:0000 0A"
        return f"until grep -q ' {entry} ' /proc/net/tcp; do sleep 0.01; done"


class SavedVmError(RigError):
    """A saved VM that cannot be used (corrupt, stale or refused by QEMU)."""


def _stamp(path: Path) -> dict[str, int]:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _identity(path: Path) -> dict[str, int]:
    """What changes when the file's data can have changed: inode, size, mtime and ctime."""
    st = path.stat()
    return {
        "dev": st.st_dev,
        "ino": st.st_ino,
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "ctime_ns": st.st_ctime_ns,
    }


def shape_of(config: MachineConfig) -> MachineConfig:
    """The config a saved VM for `config` boots with: no card, a free root port. Its modules
    are loaded at boot (they find no device), so a plugged card is probed at once."""
    return replace(config, vfio_user_sockets=(), hotplug_slot=True, incoming=False)


def saved_inputs(config: MachineConfig, services: tuple[GuestService, ...] = ()) -> dict[str, Any]:
    """What shapes a saved VM for `config` (shape_of) running `services`: its key."""
    shape = replace(shape_of(config), name="saved")
    command = qemu_command(shape, _RUNTIME)
    # A rig's own SSH key is installed after the restore (Rig), not baked into the save.
    command = [_SSHKEY_ARG.sub("", arg) for arg in command]
    files = (config.qemu.binary, config.kernel, config.initrd, config.rootfs)
    return {
        "command": command,
        "card_watch": CARD_WATCH,
        "services": [s.key() for s in services],
        "format": list(SAVE_CAPABILITIES),
        "files": {str(p): _stamp(p) for p in files},
        "qemu_version": config.qemu.version,
    }


def saved_entry(config: MachineConfig, services: tuple[GuestService, ...] = ()) -> CacheEntry:
    return entry(KIND, config.kernel.parent.name, saved_inputs(config, services))


@dataclass(frozen=True)
class SavedVm:
    """One complete saved VM in the cache."""

    entry: CacheEntry

    @property
    def state(self) -> Path:
        return self.entry.path / STATE

    @property
    def disk(self) -> Path:
        return self.entry.path / DISK

    def seal(self) -> dict[str, Any]:
        seal: dict[str, Any] = json.loads((self.entry.path / SEAL).read_text())
        return seal

    def problem(self) -> str | None:
        """What is wrong with the files, by the cheap checks (None: they look as sealed)."""
        try:
            seal = self.seal()
            for name in (STATE, DISK):
                if _stamp(self.entry.path / name) != seal[name]["stamp"]:
                    return f"{name} changed since it was saved"
        except (OSError, ValueError, KeyError, TypeError) as e:
            return f"unreadable ({e})"
        return None

    def verifier(self) -> Verifier:
        """The state's digest check, already running (join it with Verifier.check); none
        when the state is the very file whose digest matched before (VERIFIED)."""
        record = self.entry.path / VERIFIED
        with contextlib.suppress(OSError, ValueError):
            if json.loads(record.read_text()) == _identity(self.state):
                return Verifier(self.state, "", record=None, verified=True)
        return Verifier(self.state, str(self.seal()[STATE]["sha256"]), record=record)

    def restore_config(self, config: MachineConfig) -> MachineConfig:
        """`config` (with the rig's name, logs and SSH identity) restoring this save."""
        return replace(shape_of(config), rootfs=self.disk, incoming=True)


def data_digest(path: Path) -> str:
    """SHA-256 of a sparse file's data extents and their offsets: a mapped-ram state is
    mostly holes (guest RAM never written), which need not be read."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        fd, end, offset = f.fileno(), os.fstat(f.fileno()).st_size, 0
        while offset < end:
            try:
                offset = os.lseek(fd, offset, os.SEEK_DATA)
            except OSError as e:  # ENXIO: no data after offset
                if e.errno == errno.ENXIO:
                    break
                raise
            hole = os.lseek(fd, offset, os.SEEK_HOLE)
            h.update(offset.to_bytes(8, "little"))
            f.seek(offset)
            while offset < hole:
                block = f.read(min(1 << 20, hole - offset))
                if not block:
                    break
                h.update(block)
                offset += len(block)
    return h.hexdigest()


class Verifier:
    """SHA-256 of a saved state in a thread, so it costs no time beside QEMU's loading and
    the first SSH connection. A match is recorded (`record`: the file's identity) when the
    file did not change while it was read; `verified`: nothing to do."""

    def __init__(
        self, path: Path, expected: str, record: Path | None = None, verified: bool = False
    ) -> None:
        self.path = path
        self.expected = expected
        self.record = record
        self._found: str | None = None
        self._error: OSError | None = None
        self._thread: threading.Thread | None = None
        if not verified:
            self._thread = threading.Thread(target=self._run, name="saved-vm-digest", daemon=True)
            self._thread.start()

    @property
    def verified(self) -> bool:
        """Whether the state was known good without a digest (SavedVm.verifier)."""
        return self._thread is None

    def _run(self) -> None:
        try:
            before = _identity(self.path)
            self._found = data_digest(self.path)
        except OSError as e:
            self._error = e
            return
        if self.record is not None and self._found == self.expected:
            with contextlib.suppress(OSError):  # a cache this user cannot write: no record
                if _identity(self.path) == before:
                    write_atomically(self.record, json.dumps(before))

    def check(self) -> None:
        """SavedVmError unless the state is the one that was sealed."""
        if self._thread is None:
            return
        self._thread.join()
        if self._error is not None:
            raise SavedVmError(f"saved VM state {self.path} unreadable: {self._error}")
        if self._found != self.expected:
            raise SavedVmError(f"saved VM state {self.path} is corrupt (SHA-256 mismatch)")


def ensure_saved(
    config: MachineConfig,
    log_dir: Path,
    timeout: float = 180.0,
    services: tuple[GuestService, ...] = (),
) -> SavedVm:
    """The saved VM for `config` running `services`, booted and saved now if the cache has
    none (or only a stale or damaged one). Boot logs of a build go to `log_dir`/saved-vm."""
    keep = kept()  # a bad $RIG_SAVED_VMS is named before a build, not after
    saved = SavedVm(saved_entry(config, services))
    with building(saved.entry) as missing:
        if not missing and (why := saved.problem()) is not None:
            logger.info(f"saved VM {saved.entry.path}: {why}; rebuilding it")
            missing = True
        if missing:
            _build(saved, config, log_dir / "saved-vm", timeout, services)
    with contextlib.suppress(OSError):  # a cache this user cannot write keeps everything
        os.utime(saved.entry.path)  # its last use, for evict()
    if missing:
        prune_stale(saved.entry)
        evict(saved.entry, keep)
    return saved


def prune_stale(current: CacheEntry) -> None:
    """Remove this kernel's saved VMs whose files have changed since (each would be
    rebuilt under a new key anyway, and each holds a copy of the root disk)."""
    for manifest in sorted((current.root / KIND).glob(f"{current.name}-*/{MANIFEST}")):
        path = manifest.parent
        if path == current.path:
            continue
        try:
            files = json.loads(manifest.read_text())["inputs"]["files"]
            stale = any(not Path(f).exists() or _stamp(Path(f)) != st for f, st in files.items())
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            stale = True
        if stale:
            logger.info(f"removing a stale saved VM: {path}")
            shutil.rmtree(path, ignore_errors=True)


def kept() -> int:
    """How many saved VMs the cache keeps: $RIG_SAVED_VMS, else KEEP; UsageError if bad."""
    return settings.count(KEEP_ENV, KEEP)


def evict(current: CacheEntry, keep: int) -> None:
    """Remove the least recently used saved VMs (of every kernel) beyond the `keep` most
    recent. Each one's directory time is its last use (ensure_saved). Never `current`, and
    never one whose build lock is held: a rig is building or checking it."""
    root = current.root / KIND
    entries = sorted(
        (m.parent for m in root.glob(f"*/{MANIFEST}")),
        key=lambda p: p.stat().st_mtime if p.exists() else 0.0,
        reverse=True,
    )
    for path in entries[keep:]:
        if path == current.path:
            continue
        with unless_building(path) as held:
            if held:
                logger.info(f"removing the least recently used saved VM (keeping {keep}): {path}")
                shutil.rmtree(path, ignore_errors=True)


def discard(saved: SavedVm, why: str) -> None:
    """Remove a saved VM that failed a restore, so that the next ensure_saved rebuilds it."""
    logger.info(f"saved VM {saved.entry.path} not used: {why}; rebuilding it")
    with building(saved.entry):
        shutil.rmtree(saved.entry.path, ignore_errors=True)


def _build(
    saved: SavedVm,
    config: MachineConfig,
    log_dir: Path,
    timeout: float,
    services: tuple[GuestService, ...],
) -> None:
    logger.info(f"saving a booted guest for later rigs: {saved.entry.path}")
    with saved.entry.build() as stage:
        disk = stage / DISK
        # A sparse copy: the guest's writes at boot land in it, not in the shared image.
        subprocess.run(
            ["cp", "--sparse=always", "--reflink=auto", str(config.rootfs), str(disk)],
            check=True,
            capture_output=True,
        )
        disk.chmod(0o644)
        shape = replace(shape_of(config), rootfs=disk, rootfs_writable=True, log_dir=log_dir)
        with Machine(shape) as machine:
            machine.launch()
            try:
                ssh = machine.wait_ready(timeout)
            except MachineError as e:
                raise MachineError(
                    f"the guest to save did not boot: {e.args[0]}", e.log, e.tail
                ) from e
            ssh.run(CARD_WATCH, timeout).checked("the card watcher")
            for service in services:
                ssh.run(f"mkdir -p {shlex.quote(str(Path(service.remote).parent))}", timeout)
                ssh.put(service.program, service.remote)
                ssh.run(f"{service.start} {service.listening()}", timeout).checked(service.name)
            # No session survives a restore (the host's end is gone): none is saved.
            machine.drop_ssh()
            machine.save(stage / STATE, timeout)
            machine.shutdown(graceful=False)
        disk.chmod(0o444)
        (stage / STATE).chmod(0o444)
        seal = {
            STATE: {"stamp": _stamp(stage / STATE), "sha256": data_digest(stage / STATE)},
            DISK: {"stamp": _stamp(disk)},
        }
        (stage / SEAL).write_text(json.dumps(seal, indent=2))
