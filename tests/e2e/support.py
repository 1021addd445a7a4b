"""What the end-to-end tests share: making the driver take snapshots (and waiting for it the
way the driver reports it, never by sleeping), the devlink rules of the kernel under test,
and the checks for kernel warnings and leaks.
"""

from __future__ import annotations

import errno
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cx3 import layout as cr
from cx3.wire import Crdump
from rig import builtin
from rig.devlink.channels import ChannelError, NetlinkChannel, RegionChannel
from rig.formats.compare import diff, hexdump_diff
from rig.kernellog import kernel_trouble
from rig.mlx4 import (
    MAX_SNAPSHOTS,
    NO_HEALTH_BUFFER,
    RECOVERY_TIMEOUT,
    RESTARTED,
    SNAPSHOT_TIMEOUT,
    SNAPSHOTS_DISABLED,
    FaultCycle,
    regions_of,
)
from rig.rig import Rig

CRDUMP_TIMEOUT = SNAPSHOT_TIMEOUT["catas"]
RESTART_TIMEOUT = RECOVERY_TIMEOUT
CMD_TIMEOUT_FAULT = SNAPSHOT_TIMEOUT["cmd-timeout"]
__all__ = ["MAX_SNAPSHOTS", "NO_HEALTH_BUFFER", "RESTARTED", "SNAPSHOTS_DISABLED", "regions_of"]


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

    @property
    def direct_read(self) -> bool:
        # 6.2 ("devlink: support directly reading from region memory"): REGION_READ with
        # DEVLINK_ATTR_REGION_DIRECT and no snapshot id reads the live region through the
        # driver's read op. 6.1 does not know the attribute, and its liberal parsing of dump
        # requests drops it: the read is one without a snapshot id.
        return self.kernel >= (6, 2)

    @property
    def read_errors_say_why(self) -> bool:
        # 6.2 ("devlink: report extended error message in region_read_dumpit()"): a refused
        # REGION_READ carries the kernel's words; 6.1 answers a bare EINVAL.
        return self.kernel >= (6, 2)

    def read_refusal(self, snapshot: bool, direct: bool) -> Refusal | None:
        """How the kernel answers a REGION_READ of a region without a read op (mlx4's, with
        no snapshot taken yet): None when it reads. `snapshot`: an id was sent (one that
        exists when it matters); `direct`: DEVLINK_ATTR_REGION_DIRECT was set."""
        if not self.direct_read:
            if snapshot:
                return None  # the flag is dropped: an ordinary read of the snapshot
            return Refusal(errno.EINVAL, None)
        if snapshot:
            return (
                Refusal(errno.EINVAL, "Direct region read does not use snapshot")
                if direct
                else None
            )
        if direct:
            return Refusal(errno.EOPNOTSUPP, "Requested region does not support direct read")
        return Refusal(errno.EINVAL, "No snapshot id provided")

    @property
    def unknown_snapshot_message(self) -> str | None:
        """The kernel's words for a read or dump of a snapshot id the region does not hold."""
        return "Requested snapshot does not exist" if self.read_errors_say_why else None


@dataclass(frozen=True)
class Refusal:
    """A request the kernel refuses: its errno, and its extended-ack message (None: none)."""

    errno: int
    message: str | None

    def check(self, err: ChannelError) -> None:
        assert err.errno == self.errno, f"{err}: expected {errno.errorcode[self.errno]}"
        if self.message is not None:
            assert self.message in err.message, f"{err}: expected {self.message!r}"


def rules(rig: Rig) -> DevlinkRules:
    return DevlinkRules(kernel_version(rig.kernel_release))


def cli_direct_reads(rig: Rig) -> bool:
    """iproute2 >= 6.2 ("devlink: support direct region read requests") sends a `region
    read` without a snapshot id to the kernel as a direct read; older ones refuse it
    themselves ("snapshot id expected"). `region dump` needs an id in every version."""
    return iproute2_version(rig) >= (6, 2)


def iproute2_version(rig: Rig) -> tuple[int, int]:
    """(major, minor) of the guest's iproute2 ("devlink utility, iproute2-6.1.0"): the root fs
    can be any Debian release's (--userspace), and the CLI's own rules changed too."""
    out = rig.sh("devlink -V").stdout
    m = re.search(r"iproute2-(\d+)\.(\d+)", out)
    if not m:
        raise ValueError(f"cannot read an iproute2 version from {out!r}")
    return int(m.group(1)), int(m.group(2))


# --- the guest ------------------------------------------------------------------------------


def assert_no_kernel_trouble(rig: Rig, failed_commands: bool = False, since: int = 0) -> None:
    """No kernel warning in the log (from line `since`), and with `failed_commands` no
    firmware command the driver saw fail."""
    trouble = kernel_trouble("\n".join(rig.dmesg().splitlines()[since:]), failed_commands)
    assert not trouble, "kernel warnings in dmesg:\n" + "\n".join(trouble[:20])


def leak_counters(rig: Rig) -> dict[str, int]:
    """What a fault cycle must give back: netdevs (of the initial namespace: compare counts
    taken with the card's netdevs in the same place), mlx4's vmalloc/ioremap areas, its IRQs,
    and slab objects (kmemleak is not in Debian's cloud kernel)."""
    out = rig.sh(
        "ls /sys/class/net | wc -l; grep -c mlx4 /proc/vmallocinfo; "
        "grep -c mlx4 /proc/interrupts; "
        "awk 'NR>2 {n += $2} END {print n}' /proc/slabinfo"
    ).stdout.split()
    return dict(zip(("netdevs", "vmalloc", "irqs", "slab_objects"), map(int, out), strict=True))


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
    struct.pack_into(">I", base, 0x3C, 0x4EA17000 | n)  # last word (irisc, syndromes): unique
    return bytes(base)


def catas_words(n: int) -> tuple[int, ...]:
    return (0x0FFFFFFF, 0x00C30000 | n, 0xDEADBEEF, 0x12345678)


@dataclass
class Snapshot:
    """One driver snapshot (the same id in both regions) and what it must contain."""

    id: int
    truth: Crdump  # BAR0 and health buffer as the device served them to the crdump
    health: bytes  # the health buffer the test loaded
    catas: tuple[int, ...]  # the catas words injected (empty for command faults)
    notifications: list[dict[str, Any]] = field(default_factory=list)


def _snapshot(cycle: FaultCycle, health: bytes, words: tuple[int, ...]) -> Snapshot:
    assert cycle.truth is not None
    return Snapshot(cycle.snapshot_id(), cycle.truth, health, words, cycle.events)


def catas_snapshot(rig: Rig, n: int, timeout: float = CRDUMP_TIMEOUT) -> Snapshot:
    """Inject internal error n; return the snapshot once the driver has recovered."""
    health, words = health_buffer(n), catas_words(n)
    rig.device.set_health(health)
    return _snapshot(rig.mlx4.fault("catas", words=words, timeout=timeout), health, words)


def catas_without_snapshot(rig: Rig, expect: str) -> str:
    """Inject an internal error the driver must not snapshot; returns the line it logged
    instead (`expect`) once the reset and re-probe are over."""
    before = rig.mlx4.snapshot_ids()
    said = rig.mlx4.kmsg_count(expect)
    cycle = rig.mlx4.fault("catas", words=catas_words(0xFF), expect_snapshots=False)
    line = rig.wait_kmsg(expect, nth=said + 1, timeout=CRDUMP_TIMEOUT)
    assert cycle.truth is None, "the driver read BAR0 for a crdump"
    assert rig.mlx4.snapshot_ids() == before, "a snapshot appeared"
    return line


def reload_snapshot(rig: Rig, kind: str, n: int, opcode: int | None = None) -> Snapshot:
    """Arm a command fault, run `devlink dev reload` (its teardown sends the commands) and
    return the snapshot the driver takes on its way into the error state."""
    health = health_buffer(n)
    rig.device.set_health(health)
    return _snapshot(rig.mlx4.fault(kind, opcode=opcode), health, ())


def param(rig: Rig, name: str) -> dict[str, Any]:
    """cmode -> value of a devlink parameter of the rig's device."""
    return rig.devlink.param_get(rig.dev_handle, name)


# --- snapshot contents ----------------------------------------------------------------------


def assert_same_bytes(got: bytes, expected: bytes, what: str) -> None:
    """Byte-for-byte equality, failing with where and how the bytes differ."""
    d = diff(expected, got)
    assert d.equal, (
        f"{what}: {d.count} byte(s) differ (sizes {len(expected)}/{len(got)}), first at "
        + ", ".join(f"{o:#x}" for o in d.first_offsets[:8])
        + "\n"
        + hexdump_diff(expected, got, ("expected", "got"), max_lines=8)
    )


# iproute2 printing a 1 MiB cr-space snapshot costs the guest ~2 s of CPU under TCG, the
# netlink agent ~0.2 s (docs/clock.md, "Session 14"). `rig replay`, test_acceptance.py and
# test_snapshots.py read it whole through both; elsewhere the CLI reads the page of the
# fault's buffers (the catas and health buffers) and netlink the whole region.
FAULT_PAGE = (cr.CATAS_OFFSET & ~0xFFF, 0x1000)


def assert_snapshot_holds(
    rig: Rig, channel: RegionChannel, snapshot: int, region: str, expected: bytes
) -> None:
    """`region`'s snapshot holds `expected`, as `channel` reads it: whole, but for cr-space
    through the CLI (FAULT_PAGE through it, the whole over netlink)."""
    handle = rig.region(region)
    start, length = FAULT_PAGE
    if channel.name == "cli" and region == "cr-space":
        window = channel.read(handle, snapshot, start, length)
        assert_same_bytes(window, expected[start : start + length], f"{region} page {start:#x}")
        channel = NetlinkChannel(rig.netlink)
    assert_same_bytes(channel.dump(handle, snapshot), expected, region)


def be32(data: bytes, offset: int) -> int:
    return int(struct.unpack_from(">I", data, offset)[0])


def catas_region(data: bytes, words: int) -> tuple[int, ...]:
    return tuple(be32(data, cr.CATAS_OFFSET + 4 * i) for i in range(words))
