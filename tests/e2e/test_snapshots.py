"""Driver snapshots, end to end: three catas faults on a fresh driver, then everything a user
can do with the snapshots, over iproute2 and over netlink, against the device's ground truth
(checklist items 3-7, 9, 11-14, 17, 20, 21, 23).

The tests run in file order and the last ones change the snapshot set (delete, reuse of a
freed id, the cap); each asserts on the state it finds, not on what an earlier test left.
"""

from __future__ import annotations

import errno
import re
from dataclasses import dataclass, field

import pytest

from cx3 import layout as cr
from rig import builtin
from rig.devlink.channels import (
    UNPRIVILEGED,
    ChannelError,
    NetlinkChannel,
    RegionChannel,
)
from rig.errors import RigError
from rig.formats.registers import explain
from rig.mlx4 import REGIONS
from rig.pytest_plugin import rig_channel
from rig.rig import Rig
from tests.e2e.support import (
    CRDUMP_TIMEOUT,
    MAX_SNAPSHOTS,
    Snapshot,
    assert_no_kernel_trouble,
    assert_same_bytes,
    be32,
    catas_region,
    catas_snapshot,
    catas_words,
    ioremaps,
    irq_vectors,
    regions_of,
    rules,
)

pytestmark = pytest.mark.e2e

CHUNK = 256  # DEVLINK_REGION_READ_CHUNK_SIZE


@dataclass
class Taken:
    image: bytes  # the CR-space image loaded before the faults
    snapshots: list[Snapshot]
    listings: list[dict[str, list[int]]]  # iproute2's snapshot ids after each fault
    issued: list[int]  # every id the kernel handed out since the driver was loaded
    ioremaps: int  # baseline after probe, for the leak check
    irq_vectors: int
    crspace: dict[str, bytes] = field(default_factory=dict)  # channel -> snapshot 0 dump
    crspace_chunks: list[tuple[int, bytes]] = field(default_factory=list)  # netlink's

    def fault(self, rig: Rig) -> Snapshot:
        snap = catas_snapshot(rig, 100 + len(self.issued))
        self.issued.append(snap.id)
        return snap


@pytest.fixture(scope="module")
def taken(rig_session: Rig) -> Taken:
    rig = rig_session
    rig.mlx4.reprobe()
    image = builtin.crspace_image()
    rig.device.load_crspace(image)
    rig.mlx4.enable_snapshots()
    state = Taken(image, [], [], [], ioremaps(rig), irq_vectors(rig))
    for _ in range(3):
        state.snapshots.append(state.fault(rig))
        state.listings.append(rig.mlx4.snapshot_ids())
    return state


def handles(rig: Rig) -> tuple[str, str]:
    return rig.region("cr-space"), rig.region("fw-health")


def crspace_dump(rig: Rig, taken: Taken, channel: RegionChannel) -> bytes:
    """Snapshot 0 of cr-space as the channel reads it (1 MiB: read once per channel)."""
    if channel.name not in taken.crspace:
        if channel.name == "netlink":  # keep the chunks too, for the chunking test
            taken.crspace_chunks = NetlinkChannel(rig.netlink).chunks(
                rig.region("cr-space"), taken.snapshots[0].id
            )
            taken.crspace["netlink"] = b"".join(d for _, d in taken.crspace_chunks)
        else:
            taken.crspace[channel.name] = channel.dump(
                rig.region("cr-space"), taken.snapshots[0].id
            )
    return taken.crspace[channel.name]


# --- appearing --------------------------------------------------------------------------------


def test_snapshots_appear_one_by_one_with_the_kernels_ids(rig: Rig, taken: Taken) -> None:
    rule = rules(rig)
    ids: list[int] = []
    for snap, listing in zip(taken.snapshots, taken.listings, strict=True):
        assert snap.id == rule.next_snapshot_id(set(ids), ids)
        ids.append(snap.id)
        assert listing == {"cr-space": sorted(ids), "fw-health": sorted(ids)}


def test_each_snapshot_is_announced_for_both_regions(rig: Rig, taken: Taken) -> None:
    for snap in taken.snapshots:
        seen = {(e["cmd"], e["dev"], e["region"], e["snapshot"]) for e in snap.notifications}
        assert seen == {("new", rig.dev_handle, r, snap.id) for r in REGIONS}


def test_dmesg_names_every_snapshot(rig: Rig, taken: Taken) -> None:
    dmesg = rig.dmesg()
    for snap in taken.snapshots:
        for region in REGIONS:
            assert f"crdump: added snapshot {snap.id} to devlink region {region}" in dmesg
    assert dmesg.count("device was reset successfully") >= len(taken.snapshots)


# --- contents ---------------------------------------------------------------------------------


def test_fw_health_holds_each_faults_health_buffer(
    rig: Rig, taken: Taken, devlink: RegionChannel
) -> None:
    assert len({s.health for s in taken.snapshots}) == len(taken.snapshots)
    for snap in taken.snapshots:
        data = devlink.dump(rig.region("fw-health"), snap.id)
        assert_same_bytes(snap.truth.health, snap.health, "device truth vs health loaded")
        assert_same_bytes(data, snap.health, f"fw-health snapshot {snap.id} ({devlink.name})")


def test_crspace_is_what_bar0_held(rig: Rig, taken: Taken, devlink: RegionChannel) -> None:
    snap = taken.snapshots[0]
    data = crspace_dump(rig, taken, devlink)
    assert_same_bytes(data, snap.truth.image, f"cr-space snapshot {snap.id} ({devlink.name})")
    # The words the driver changed itself (crdump.c), and the injected ones (cx3.layout):
    assert be32(data, cr.BLOCK_VOLATILE) == 1
    assert be32(taken.image, cr.CR_FILTER) & 1 << 6, "the image sets the CR filter bit"
    assert be32(data, cr.CR_FILTER) & 1 << 6 == 0, "crdump clears it before reading"
    assert catas_region(data, len(snap.catas)) == snap.catas
    assert data[cr.HEALTH_OFFSET : cr.HEALTH_OFFSET + cr.HEALTH_SIZE] == snap.health
    unexplained = [c for c in explain(taken.image, data) if c.register is None]
    assert not unexplained, f"bytes changed outside any register: {unexplained[:5]}"


def test_later_snapshots_hold_their_own_fault(
    rig: Rig, taken: Taken, devlink: RegionChannel
) -> None:
    page = cr.CATAS_OFFSET  # catas words, health buffer and block-volatile word
    health = cr.HEALTH_OFFSET - page
    for snap in taken.snapshots[1:]:
        data = devlink.read(rig.region("cr-space"), snap.id, page, cr.PAGE)
        assert_same_bytes(
            data,
            snap.truth.image[page : page + cr.PAGE],
            f"cr-space snapshot {snap.id} page {page:#x} ({devlink.name})",
        )
        assert tuple(be32(data, 4 * i) for i in range(len(snap.catas))) == snap.catas
        assert data[health : health + cr.HEALTH_SIZE] == snap.health


def test_cli_and_netlink_agree_on_every_field_and_byte(rig: Rig, taken: Taken) -> None:
    cli, netlink = rig_channel(rig, "cli"), rig_channel(rig, "netlink")
    assert cli.regions() == netlink.regions()
    for handle in handles(rig):
        assert cli.region(handle) == netlink.region(handle)
    for snap in taken.snapshots:
        assert cli.dump(rig.region("fw-health"), snap.id) == netlink.dump(
            rig.region("fw-health"), snap.id
        )
        assert cli.read(rig.region("cr-space"), snap.id, 0x80000, 0x1000) == netlink.read(
            rig.region("cr-space"), snap.id, 0x80000, 0x1000
        )
    assert_same_bytes(
        crspace_dump(rig, taken, netlink), crspace_dump(rig, taken, cli), "cr-space: netlink vs CLI"
    )


def test_dump_text_is_16_bytes_a_line_with_16_digit_addresses(rig: Rig, taken: Taken) -> None:
    snap = taken.snapshots[0]
    for name, size, truth in (
        ("fw-health", cr.HEALTH_SIZE, snap.truth.health),
        ("cr-space", cr.SIZE, snap.truth.image),
    ):
        # Through a file: iproute2 writes dump text in small pieces, each an SSH packet.
        text = rig.sh(
            f"devlink region dump {rig.region(name)} snapshot {snap.id} > /tmp/d; "
            "cat /tmp/d; rm -f /tmp/d"
        ).stdout
        lines = text.splitlines()
        assert len(lines) == size // 16
        data = bytearray()
        for n, line in enumerate(lines):
            m = re.fullmatch(r"([0-9a-f]{16})((?: [0-9a-f]{2}){16}) ?", line)
            assert m, f"{name} line {n}: {line!r}"
            assert int(m.group(1), 16) == 16 * n
            data += bytes.fromhex(m.group(2).replace(" ", ""))
        assert_same_bytes(bytes(data), truth, f"{name} dump text")


# --- reading ----------------------------------------------------------------------------------


def test_read_edge_cases(rig: Rig, taken: Taken, devlink: RegionChannel) -> None:
    snap = taken.snapshots[0]
    crs, fwh = handles(rig)
    image = snap.truth.image
    assert devlink.read(crs, snap.id, 5, 1) == image[5:6]
    middle = cr.CATAS_OFFSET + 0xF0  # the end of the catas buffer into the health buffer
    assert devlink.read(crs, snap.id, middle, 0x120) == image[middle : middle + 0x120]
    assert devlink.read(crs, snap.id, cr.SIZE - 8, 1000) == image[-8:]  # clamped
    assert devlink.read(fwh, snap.id, 60, 100) == snap.health[60:]
    assert devlink.read(fwh, snap.id, 0, 1 << 20) == snap.health
    assert devlink.read(crs, snap.id, cr.SIZE, 16) == b""  # start == size: nothing, no error
    assert devlink.read(crs, snap.id, 100, 0) == b""  # length 0: nothing, no error
    for start in (cr.SIZE + 4, cr.SIZE + 4096):
        with pytest.raises(ChannelError) as err:
            devlink.read(crs, snap.id, start, 16)
        assert err.value.errno == errno.EINVAL
    with pytest.raises(ChannelError) as err:
        devlink.read(fwh, snap.id, cr.HEALTH_SIZE + 1, 1)
    assert err.value.errno == errno.EINVAL


def test_netlink_reads_come_in_contiguous_256_byte_chunks(rig: Rig, taken: Taken) -> None:
    netlink = NetlinkChannel(rig.netlink)
    snap = taken.snapshots[0]
    chunks = netlink.chunks(rig.region("cr-space"), snap.id, 100, 1000)
    assert [a for a, _ in chunks] == [100, 356, 612, 868]
    assert [len(d) for _, d in chunks] == [CHUNK, CHUNK, CHUNK, 1000 - 3 * CHUNK]
    whole = netlink.chunks(rig.region("fw-health"), snap.id)
    assert [(a, len(d)) for a, d in whole] == [(0, cr.HEALTH_SIZE)]
    crspace_dump(rig, taken, netlink)
    dump = taken.crspace_chunks
    assert [a for a, _ in dump] == list(range(0, cr.SIZE, CHUNK))
    assert {len(d) for _, d in dump} == {CHUNK}


# --- refusals ---------------------------------------------------------------------------------


def test_unknown_snapshot_id_fails_and_changes_nothing(
    rig: Rig, taken: Taken, devlink: RegionChannel
) -> None:
    before = rig.mlx4.snapshot_ids()
    unused = max(before["cr-space"] + before["fw-health"]) + 1
    said = rules(rig).unknown_snapshot_message  # reads and dumps only: DEL says nothing
    for handle in handles(rig):
        for request in ("read", "dump", "del"):
            with pytest.raises(ChannelError) as err:
                if request == "read":
                    devlink.read(handle, unused, 0, 4)
                elif request == "dump":
                    devlink.dump(handle, unused)
                else:
                    devlink.delete(handle, unused)
            assert err.value.errno == errno.EINVAL, f"{request} {handle}"
            if said is not None and request != "del":
                assert said in err.value.message, f"{request} {handle}: {err.value}"
    assert rig.mlx4.snapshot_ids() == before


def test_direct_read_with_a_snapshot_id_follows_the_kernel_rule(rig: Rig, taken: Taken) -> None:
    """DEVLINK_ATTR_REGION_DIRECT with an id (netlink: the CLI never sends both)."""
    snap = taken.snapshots[0]
    netlink = NetlinkChannel(rig.netlink)
    refusal = rules(rig).read_refusal(snapshot=True, direct=True)
    for handle, truth in zip(handles(rig), (snap.truth.image, snap.health), strict=True):
        if refusal is None:  # the kernel dropped the flag: the snapshot's bytes
            assert netlink.read(handle, snap.id, 0, 64, direct=True) == truth[:64]
            continue
        with pytest.raises(ChannelError) as err:
            netlink.read(handle, snap.id, 0, 64, direct=True)
        refusal.check(err.value)


@pytest.mark.parametrize("channel", ["cli", "netlink"])
def test_without_cap_net_admin_new_del_and_read_get_eperm(
    rig: Rig, taken: Taken, channel: str
) -> None:
    caps = rig.sh(f"{UNPRIVILEGED} grep CapEff /proc/self/status").stdout.split()
    assert caps == ["CapEff:", "0000000000000000"], "the unprivileged user has capabilities"
    before = rig.mlx4.snapshot_ids()
    snap_id = before["cr-space"][0]
    user = rig.channel(channel, UNPRIVILEGED)
    try:
        for name, request in (
            ("read", lambda: user.read(rig.region("cr-space"), snap_id, 0, 16)),
            ("del", lambda: user.delete(rig.region("cr-space"), snap_id)),
            ("new", lambda: user.new(rig.region("cr-space"), None)),
        ):
            with pytest.raises(ChannelError) as err:
                request()
            assert err.value.errno == errno.EPERM, name
    finally:
        user.close()
    assert rig.mlx4.snapshot_ids() == before


# --- deleting and reusing ids -----------------------------------------------------------------


def test_delete_removes_exactly_that_snapshot(
    rig: Rig, taken: Taken, devlink: RegionChannel
) -> None:
    # Each channel deletes from its own region, so together they free one id in both.
    region = "cr-space" if devlink.name == "cli" else "fw-health"
    before = rig.mlx4.snapshot_ids()
    assert len(before[region]) >= 3, f"needs three snapshots in {region}: {before}"
    victim = before[region][len(before[region]) // 2]  # from the middle
    watch = rig.netlink.watch(count=1)
    try:
        devlink.delete(rig.region(region), victim)
        event = watch.next(60)
    finally:
        watch.close()
    assert event == {"cmd": "del", "dev": rig.dev_handle, "region": region, "snapshot": victim}
    expected = dict(before)
    expected[region] = [i for i in before[region] if i != victim]
    assert rig.mlx4.snapshot_ids() == expected
    with pytest.raises(ChannelError):
        devlink.dump(rig.region(region), victim)


def test_the_agent_answers_while_it_watches_and_after_a_watch_ends_early(
    rig: Rig, taken: Taken
) -> None:
    """The netlink agent's own process watches (no second Python start-up in the guest
    before a fault) and answers requests meanwhile; a watch closed before its notifications
    came leaves nothing of itself among the agent's later replies."""
    before = rig.netlink.regions()
    watch = rig.netlink.watch(count=2)
    try:
        assert rig.netlink.regions() == before
        with pytest.raises(RigError, match="already watching"):
            rig.netlink.watch(count=1)
    finally:
        watch.close()
    assert rig.netlink.regions() == before


def test_a_freed_id_is_given_to_the_next_snapshot(rig: Rig, taken: Taken) -> None:
    ids = rig.mlx4.snapshot_ids()
    # Make sure an id is free in both regions, below the highest one in use.
    held = sorted(set(ids["cr-space"]) | set(ids["fw-health"]))
    holes = [i for i in range(max(held)) if i not in held]
    if not holes:
        victim = held[len(held) // 2]
        for region in REGIONS:
            if victim in ids[region]:
                rig.devlink.delete(rig.region(region), victim)
        ids = rig.mlx4.snapshot_ids()
    in_use = set(ids["cr-space"]) | set(ids["fw-health"])
    expected = rules(rig).next_snapshot_id(in_use, taken.issued)
    snap = taken.fault(rig)
    assert snap.id == expected
    if rules(rig).ids_from_xarray:
        assert snap.id < max(in_use), "the lowest free id, not the next one up"
    after = rig.mlx4.snapshot_ids()
    for region in REGIONS:
        assert after[region] == sorted([*ids[region], snap.id])


def test_a_region_holds_at_most_max_snapshots(rig: Rig, taken: Taken) -> None:
    regions = regions_of(rig.devlink.regions(), rig.dev_handle)
    assert {r.max_snapshots for r in regions.values()} == {MAX_SNAPSHOTS}
    while len(rig.mlx4.snapshot_ids()["cr-space"]) < MAX_SNAPSHOTS:
        taken.fault(rig)
    full = rig.mlx4.snapshot_ids()
    assert full["cr-space"] == full["fw-health"] and len(full["cr-space"]) == MAX_SNAPSHOTS
    # One more fault: the driver still dumps and resets, but devlink refuses the snapshot.
    next_id = rules(rig).next_snapshot_id(set(full["cr-space"]), taken.issued)
    taken.issued.append(next_id)
    refused = rig.mlx4.kmsg_count("crdump: devlink create cr-space snapshot id")
    cycle = rig.mlx4.fault("catas", words=catas_words(0xCA), expect_snapshots=False)
    line = rig.wait_kmsg(
        "crdump: devlink create cr-space snapshot id", nth=refused + 1, timeout=CRDUMP_TIMEOUT
    )
    assert line.endswith(f"snapshot id {next_id} err -{errno.ENOSPC}"), line
    assert f"devlink create fw-health snapshot id {next_id} err -{errno.ENOSPC}" in rig.dmesg()
    assert cycle.truth is not None, "the driver did not read BAR0"
    assert rig.mlx4.snapshot_ids() == full


def test_fault_cycles_leave_no_warning_or_leak(rig: Rig, taken: Taken) -> None:
    assert len(taken.issued) >= 3
    assert_no_kernel_trouble(rig)
    assert ioremaps(rig) == taken.ioremaps, "an ioremap() of mlx4_core was not undone"
    assert irq_vectors(rig) == taken.irq_vectors
