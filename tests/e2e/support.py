"""What the end-to-end tests share: making the driver take snapshots (and waiting for it the
way the driver reports it, never by sleeping), the devlink rules of the kernel under test,
and the checks for kernel warnings and leaks.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cx3 import crspace as cr
from cx3.control import CrdumpData
from rig import builtin
from rig.compare import diff, hexdump_diff
from rig.devlink.cli import RegionInfo
from rig.kernellog import kernel_trouble
from rig.session import REGIONS, Rig

CRDUMP_TIMEOUT = 150.0  # catas poll (5 s) + crdump (~15 s under INTx), on a busy 2-core host
RESTART_TIMEOUT = 120.0
CMD_TIMEOUT_FAULT = 240.0  # the driver's 60 s command timeout, then crdump, reset, reload
RESTARTED = "mlx4_restart_one was ended"
SNAPSHOTS_DISABLED = "crdump: devlink snapshot disabled, skipping"
NO_HEALTH_BUFFER = "crdump: FW doesn't support health buffer access, skipping"
MAX_SNAPSHOTS = 8  # mlx4's MAX_NUM_OF_DUMPS_TO_STORE (crdump.c)


# --- the rules of the kernel under test ------------------------------------------------------


def kernel_version(release: str) -> tuple[int, int]:
    """(major, minor) of a release string such as '6.1.0-56-cloud-amd64'."""
    m = re.match(r"(\d+)\.(\d+)", release)
    if not m:
        raise ValueError(f"cannot read a kernel version from {release!r}")
    return int(m.group(1)), int(m.group(2))


@dataclass(frozen=True)
class DevlinkRules:
    """devlink region behaviour that changed between kernel versions."""

    kernel: tuple[int, int]

    @property
    def ids_from_xarray(self) -> bool:
        # 5.7 ("devlink: use xa_alloc to reserve snapshot id"): before, a per-device counter.
        return self.kernel >= (5, 7)

    def next_snapshot_id(self, in_use: set[int], issued: Sequence[int]) -> int:
        """The id the kernel gives the next driver snapshot.

        in_use: ids any region of the device still holds; issued: every id handed out since
        the devlink instance was created (only the pre-5.7 counter needs it).
        """
        if self.ids_from_xarray:
            return min(set(range(len(in_use) + 1)) - in_use)  # lowest free id, from 0
        return max(issued, default=0) + 1  # ++devlink->snapshot_id, from 1

    @property
    def reports_max_snapshots(self) -> bool:
        return self.kernel >= (5, 16)  # DEVLINK_ATTR_REGION_MAX_SNAPSHOTS


def rules(rig: Rig) -> DevlinkRules:
    return DevlinkRules(kernel_version(rig.kernel_release))


# --- the guest ------------------------------------------------------------------------------


def kmsg_count(rig: Rig, text: str) -> int:
    """How often the kernel log holds `text` (to wait for the next one with wait_kmsg)."""
    return rig.dmesg().count(text)


def assert_no_kernel_trouble(rig: Rig) -> None:
    trouble = kernel_trouble(rig.dmesg())
    assert not trouble, "kernel warnings in dmesg:\n" + "\n".join(trouble[:20])


def reprobe(rig: Rig) -> None:
    """rmmod + modprobe mlx4_core: a new devlink instance, every parameter at its default,
    no snapshots, snapshot ids from scratch — a clean device without a reboot."""
    rig.unload_driver()
    params = " ".join((f"msi_x={int(rig.config.msi_x)}", *rig.config.mlx4_params))
    rig.sh(f"modprobe mlx4_core {params}", timeout=180)  # probing is synchronous
    assert rig.wait_bound() == rig.dev_handle


def snapshot_ids(rig: Rig) -> dict[str, list[int]]:
    """Region name -> its snapshot ids, for the rig's device (iproute2's view)."""
    return {
        r.handle.rsplit("/", 1)[-1]: r.snapshots
        for r in rig.devlink.regions()
        if r.handle.startswith(rig.dev_handle + "/")
    }


def regions_of(regions: list[RegionInfo], dev: str) -> dict[str, RegionInfo]:
    return {r.handle.rsplit("/", 1)[-1]: r for r in regions if r.handle.startswith(dev + "/")}


def ioremaps(rig: Rig) -> int:
    """mlx4_core's live ioremap()s: crdump maps all of BAR0 each time and must unmap it."""
    return int(rig.sh("grep -c 'mlx4' /proc/vmallocinfo || true").stdout.strip() or 0)


def irq_vectors(rig: Rig) -> int:
    bdf = rig.dev_handle.split("/", 1)[1]
    out = rig.sh(f"ls /sys/bus/pci/devices/{bdf}/msi_irqs 2>/dev/null | wc -l").stdout
    return int(out.strip())


# --- faults ---------------------------------------------------------------------------------


def health_buffer(n: int) -> bytes:
    """A health buffer unique to fault n, so a snapshot can only match its own fault."""
    base = bytearray(builtin.health_buffer())
    struct.pack_into(">I", base, 0x3C, 0x4EA17000 | n)  # last word: spare in the real layout
    return bytes(base)


def catas_words(n: int) -> tuple[int, ...]:
    return (0x0FFFFFFF, 0x00C30000 | n, 0xDEADBEEF, 0x12345678)


@dataclass
class Snapshot:
    """One driver snapshot (the same id in both regions) and what it must contain."""

    id: int
    truth: CrdumpData  # BAR0 and health buffer as the device served them to the crdump
    health: bytes  # the health buffer the test loaded
    catas: tuple[int, ...]  # the catas words injected (empty for command faults)
    notifications: list[dict[str, Any]] = field(default_factory=list)


def _await_snapshots(rig: Rig, trigger: Callable[[], None], timeout: float) -> tuple[
        int, list[dict[str, Any]]]:
    """Run `trigger` and wait for the REGION_NEW of both regions; (id, notifications)."""
    _, events = rig.netlink.notifications_during(trigger, len(REGIONS), timeout)
    assert all(e["cmd"] == "new" and e["dev"] == rig.dev_handle for e in events), events
    assert sorted(e["region"] for e in events) == sorted(REGIONS), events
    ids = {e["snapshot"] for e in events}
    assert len(ids) == 1 and isinstance(next(iter(ids)), int), (
        f"both regions must get the same new snapshot id: {events}")
    return ids.pop(), events


def catas_snapshot(rig: Rig, n: int, timeout: float = CRDUMP_TIMEOUT) -> Snapshot:
    """Inject internal error n; return the snapshot once the driver has recovered."""
    health, words = health_buffer(n), catas_words(n)
    rig.device.set_health(health)
    crdumps = rig.device.state()["crdumps"]
    restarts = kmsg_count(rig, RESTARTED)
    snap_id, events = _await_snapshots(rig, lambda: rig.device.inject_catas(words), timeout)
    line = rig.wait_kmsg(RESTARTED, nth=restarts + 1, timeout=RESTART_TIMEOUT)
    assert "ret=0" in line, f"the driver did not recover: {line}"
    assert rig.device.state()["crdumps"] == crdumps + 1, "one crdump per fault"
    return Snapshot(snap_id, rig.device.crdump(crdumps), health, words, events)


def catas_without_snapshot(rig: Rig, expect: str) -> str:
    """Inject an internal error the driver must not snapshot; returns the line it logged
    instead (`expect`) once the reset and re-probe are over."""
    before = snapshot_ids(rig)
    crdumps = rig.device.state()["crdumps"]
    restarts = kmsg_count(rig, RESTARTED)
    said = kmsg_count(rig, expect)
    rig.device.inject_catas(catas_words(0xFF))
    line = rig.wait_kmsg(expect, nth=said + 1, timeout=CRDUMP_TIMEOUT)
    done = rig.wait_kmsg(RESTARTED, nth=restarts + 1, timeout=RESTART_TIMEOUT)
    assert "ret=0" in done, f"the driver did not recover: {done}"
    assert rig.device.state()["crdumps"] == crdumps, "the driver read BAR0 for a crdump"
    assert snapshot_ids(rig) == before, "a snapshot appeared"
    return line


def reload_snapshot(rig: Rig, arm: Callable[[], None], n: int, timeout: float) -> Snapshot:
    """Arm a command fault, run `devlink dev reload` (its teardown sends the commands) and
    return the snapshot the driver takes on its way into the error state."""
    health = health_buffer(n)
    rig.device.set_health(health)
    crdumps = rig.device.state()["crdumps"]
    arm()
    reload = None

    def trigger() -> None:
        nonlocal reload
        reload = rig.machine.ssh.start(f"devlink dev reload {rig.dev_handle}")

    try:
        snap_id, events = _await_snapshots(rig, trigger, timeout)
        assert reload is not None
        status = reload.wait(timeout)
        assert status == 0, f"`devlink dev reload` failed (exit {status}): {reload.stderr()}"
    finally:
        if reload is not None:
            reload.close()
    assert rig.wait_bound() == rig.dev_handle
    assert rig.device.state()["crdumps"] == crdumps + 1, "one crdump per fault"
    return Snapshot(snap_id, rig.device.crdump(crdumps), health, (), events)


def enable_snapshots(rig: Rig, *cmodes: str) -> None:
    for cmode in cmodes or ("runtime",):
        rig.devlink.param_set(rig.dev_handle, "region_snapshot_enable", "true", cmode)


def param(rig: Rig, name: str) -> dict[str, Any]:
    """cmode -> value of a devlink parameter of the rig's device."""
    return rig.devlink.param_get(rig.dev_handle, name)


def reload(rig: Rig) -> None:
    rig.sh(f"devlink dev reload {rig.dev_handle}", timeout=180)
    assert rig.wait_bound() == rig.dev_handle


# --- snapshot contents ----------------------------------------------------------------------


def assert_same_bytes(got: bytes, expected: bytes, what: str) -> None:
    """Byte-for-byte equality, failing with where and how the bytes differ."""
    d = diff(expected, got)
    assert d.equal, (
        f"{what}: {d.count} byte(s) differ (sizes {len(expected)}/{len(got)}), first at "
        + ", ".join(f"{o:#x}" for o in d.first_offsets[:8]) + "\n"
        + hexdump_diff(expected, got, ("expected", "got"), max_lines=8)
    )


def be32(data: bytes, offset: int) -> int:
    return int(struct.unpack_from(">I", data, offset)[0])


def catas_region(data: bytes, words: int) -> tuple[int, ...]:
    return tuple(be32(data, cr.CATAS_OFFSET + 4 * i) for i in range(words))
