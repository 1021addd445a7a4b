"""mstflint's `mstregdump` on the emulated card with mlx4_core bound, both ways it reaches
CR-space: BAR0 mapped from sysfs (the rig's guests boot with `iomem=relaxed`, which lets it
while the driver holds the BAR) and the config-space gateway. Each must read what the device
holds (rig.jobs.readers.check_mstregdump), and the model's gateway counter says which way
it came in."""

from __future__ import annotations

import pytest

from rig.jobs.readers import GATEWAY, MAPPED, check_mstregdump, take_mstregdump
from rig.rig import Rig

pytestmark = pytest.mark.e2e

DWORDS = 35_572  # ConnectX3.csv's list, which mstregdump reads on a 15b3:1003


def gateway_reads(rig: Rig) -> int:
    reads: int = rig.device.state()["counts"]["gateway_reads"]
    return reads


@pytest.mark.parametrize("access", [MAPPED, GATEWAY])
def test_mstregdump_reads_what_the_device_holds(rig: Rig, access: str) -> None:
    before = gateway_reads(rig)
    live = take_mstregdump(rig, access)
    row, pair = check_mstregdump(live)
    assert row.ok, row.problem
    assert pair is not None and row.compared_bytes == 4 * DWORDS
    through_gateway = gateway_reads(rig) - before
    if access == GATEWAY:
        assert "/config" in live.command and through_gateway >= DWORDS
    else:
        assert through_gateway == 0, "mstregdump did not map BAR0"
