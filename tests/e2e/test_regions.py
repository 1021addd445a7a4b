"""The region surface of a freshly probed device, before any snapshot: what `region show`
reports, and the requests devlink must refuse (checklist items 1, 2, 8, 9, 10, 14, 15)."""

from __future__ import annotations

import errno
import json
from collections.abc import Callable

import pytest

from cx3 import layout as cr
from rig.devlink.channels import ChannelError, NetlinkChannel, RegionChannel
from rig.pytest_plugin import rig_channel
from rig.rig import Rig
from tests.e2e.support import MAX_SNAPSHOTS, Refusal, cli_direct_reads, regions_of, rules

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module", autouse=True)
def fresh_driver(rig_session: Rig) -> None:
    rig_session.mlx4.reprobe()


def bar0_length(rig: Rig) -> int:
    bdf = rig.dev_handle.split("/", 1)[1]
    start, end, _ = rig.sh(f"head -1 /sys/bus/pci/devices/{bdf}/resource").stdout.split()
    return int(end, 16) - int(start, 16) + 1


def test_exactly_two_empty_regions_after_probe(rig: Rig, devlink: RegionChannel) -> None:
    regions = regions_of(devlink.regions(), rig.dev_handle)
    assert sorted(regions) == ["cr-space", "fw-health"]
    assert regions["cr-space"].size == bar0_length(rig) == cr.SIZE
    assert regions["fw-health"].size == cr.HEALTH_SIZE
    assert regions["cr-space"].snapshots == regions["fw-health"].snapshots == []


def test_max_snapshots_is_reported_as_the_driver_cap(rig: Rig, devlink: RegionChannel) -> None:
    expected = MAX_SNAPSHOTS if rules(rig).reports_max_snapshots else None
    for name in ("cr-space", "fw-health"):
        assert devlink.region(rig.region(name)).max_snapshots == expected


def test_region_show_plain_and_json(rig: Rig) -> None:
    for name, size in (("cr-space", cr.SIZE), ("fw-health", cr.HEALTH_SIZE)):
        handle = rig.region(name)
        plain = rig.sh(f"devlink region show {handle}").stdout.strip()
        assert plain.startswith(f"{handle}: size {size} snapshot []"), plain
        for flags in ("-j", "-jp", "-j -p"):
            doc = json.loads(rig.sh(f"devlink {flags} region show {handle}").stdout)
            assert doc["regions"][handle]["size"] == size
            assert doc["regions"][handle]["snapshot"] == []
    pretty = rig.sh("devlink -jp region show").stdout
    assert "\n    " in pretty, "-p should indent"
    assert json.loads(pretty) == json.loads(rig.sh("devlink -j region show").stdout)


def test_cli_and_netlink_agree_on_every_region_field(rig: Rig) -> None:
    cli, netlink = rig_channel(rig, "cli"), rig_channel(rig, "netlink")
    assert cli.regions() == netlink.regions()
    for name in ("cr-space", "fw-health"):
        assert cli.region(rig.region(name)) == netlink.region(rig.region(name))


def test_region_new_is_not_supported(rig: Rig, devlink: RegionChannel) -> None:
    for snapshot in (None, 5):
        with pytest.raises(ChannelError) as err:
            devlink.new(rig.region("cr-space"), snapshot)
        assert err.value.errno == errno.EOPNOTSUPP
    assert "does not support taking an immediate snapshot" in err.value.message
    assert devlink.region(rig.region("cr-space")).snapshots == []


def test_read_and_dump_need_a_snapshot_id(rig: Rig, devlink: RegionChannel) -> None:
    # A read without an id: the CLI asks the kernel for a direct read when it is iproute2
    # >= 6.2, netlink asks for an ordinary one; mlx4's regions have no read op, so the
    # kernel's rule decides the answer. A dump, and every request of an older devlink, the
    # CLI refuses itself.
    kernel = rules(rig)
    if devlink.name == "netlink":
        read = dump = kernel.read_refusal(snapshot=False, direct=False)
    else:
        read = kernel.read_refusal(snapshot=False, direct=True) if cli_direct_reads(rig) else None
        dump = None
    requests: list[tuple[Refusal | None, Callable[[], object]]] = [
        (read, lambda: devlink.read(rig.region("fw-health"), None, 0, 4)),
        (dump, lambda: devlink.dump(rig.region("fw-health"), None)),
    ]
    for refusal, request in requests:
        with pytest.raises(ChannelError) as err:
            request()
        if refusal is None:  # the CLI's own refusal: the kernel was never asked
            assert err.value.errno is None and "snapshot id expected" in err.value.message
        else:
            refusal.check(err.value)


def test_direct_read_follows_the_kernel_rule_over_netlink(rig: Rig) -> None:
    """DEVLINK_ATTR_REGION_DIRECT on a region without a read op, as the kernel under test
    answers it (a 6.1 kernel drops the attribute it does not know)."""
    refusal = rules(rig).read_refusal(snapshot=False, direct=True)
    assert refusal is not None, "every kernel refuses a read of mlx4's regions without an id"
    netlink = NetlinkChannel(rig.netlink)
    for name in ("cr-space", "fw-health"):
        with pytest.raises(ChannelError) as err:
            netlink.read(rig.region(name), None, 0, 4, direct=True)
        refusal.check(err.value)


def test_unknown_region_and_snapshot_fail_cleanly(rig: Rig, devlink: RegionChannel) -> None:
    unknown = f"{rig.dev_handle}/no-such-region"
    with pytest.raises(ChannelError) as err:
        devlink.region(unknown)
    assert err.value.errno == errno.EINVAL
    with pytest.raises(ChannelError) as err:
        devlink.read(unknown, 0, 0, 4)
    assert err.value.errno == errno.EINVAL
    with pytest.raises(ChannelError) as err:
        devlink.region("pci/0000:00:1f.7/cr-space")
    assert err.value.errno == errno.ENODEV
    requests: list[Callable[[], object]] = [
        lambda: devlink.read(rig.region("cr-space"), 0, 0, 4),
        lambda: devlink.dump(rig.region("cr-space"), 0),
        lambda: devlink.delete(rig.region("cr-space"), 0),
    ]
    for request in requests:
        with pytest.raises(ChannelError) as err:
            request()
        assert err.value.errno == errno.EINVAL


def test_delete_needs_a_snapshot_id(rig: Rig, devlink: RegionChannel) -> None:
    with pytest.raises(ChannelError) as err:
        devlink.delete(rig.region("cr-space"), None)
    if devlink.name == "cli":
        assert err.value.errno is None and "snapshot id expected" in err.value.message
    else:
        assert err.value.errno == errno.EINVAL
