"""Rigs resumed from a saved VM (rig.vm.saved): the card hot-plugged into the restored guest
works as on a freshly booted one, only this rig's key opens the guest, and a damaged save is
rebuilt, not trusted. The whole suite runs this way with `--rig-boot saved`."""

from __future__ import annotations

import logging
import os
import time

import pytest

from rig import builtin
from rig.devlink.agent import REMOTE
from rig.errors import MachineError
from rig.provision.guest import ensure_guest
from rig.pytest_plugin import RigFactory, rig_channel
from rig.vm.ssh import GuestSsh, SshIdentity
from tests.e2e.support import assert_no_kernel_trouble, assert_snapshot_holds, catas_snapshot

pytestmark = pytest.mark.e2e


# First: the module's longest test (a rebuild), and a work unit's last test holds the
# worker's next unit while it runs (tests/conftest.py).
def test_a_corrupt_saved_state_is_rebuilt(
    rig_factory: RigFactory, caplog: pytest.LogCaptureFixture
) -> None:
    first = rig_factory(boot="saved", name="saved-first", mlx4_en=False)
    saved = first.saved
    rig_factory.stop(first)
    assert saved is not None
    state = saved.state
    st = state.stat()
    state.chmod(0o644)
    with state.open("r+b") as f:  # one flipped byte: the same size, and the time put back
        f.seek(st.st_size // 2)
        byte = f.read(1)[0]
        f.seek(st.st_size // 2)
        f.write(bytes([byte ^ 0xFF]))
    state.chmod(0o444)
    os.utime(state, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert saved.problem() is None, "only the digest can tell"

    with caplog.at_level(logging.INFO, logger="rig.vm.saved"):
        again = rig_factory(boot="saved", name="saved-again", mlx4_en=False)
    try:
        said = [r.getMessage() for r in caplog.records]
        assert any("corrupt" in m and "rebuilding" in m for m in said), said
        assert again.dev_handle, "the rig came up from the rebuilt save"
        assert again.saved is not None and again.saved.problem() is None
        again.saved.verifier().check()
    finally:
        rig_factory.stop(again)


def test_a_saved_rig_takes_a_fault_and_opens_to_its_own_key_only(
    rig_factory: RigFactory,
) -> None:
    rig = rig_factory(boot="saved", name="saved")
    try:
        assert rig.saved is not None
        assert rig.dev_handle.startswith("pci/0000:01:"), "the card is behind the root port"
        assert rig.timings.marks["bound"] >= rig.timings.marks["card_plugged"]
        assert rig.mlx4.wait_netdevs_up(), "mlx4_en's netdevs up with carrier"
        # The guest's clock was set at the restore, not left at the time of the save.
        assert abs(float(rig.sh("date +%s.%N").stdout) - time.time()) < 30

        port, identity = rig.ssh_access()
        GuestSsh.connect("127.0.0.1", port, identity, timeout=30).close()
        cache_key = SshIdentity(ensure_guest().client_key.private, identity.host_key)
        with pytest.raises(MachineError):
            GuestSsh.connect("127.0.0.1", port, cache_key, timeout=30).close()

        rig.device.load_crspace(builtin.crspace_image())
        rig.mlx4.enable_snapshots()
        snap = catas_snapshot(rig, 1)
        cli = rig_channel(rig, "cli")
        assert_snapshot_holds(rig, cli, snap.id, "fw-health", snap.truth.health)
        assert_snapshot_holds(rig, cli, snap.id, "cr-space", snap.truth.image)  # and netlink
        # The netlink reader was the saved guest's listening agent: no agent was started.
        assert rig.sh(f"pgrep -f '[{REMOTE[0]}]{REMOTE[1:]} listen'", check=False).status == 0
        assert rig.sh(f"pgrep -f '[{REMOTE[0]}]{REMOTE[1:]} serve'", check=False).status == 1
        assert_no_kernel_trouble(rig)
    finally:
        rig_factory.stop(rig)


def test_without_the_saved_agent_the_rig_starts_one(
    rig_factory: RigFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """A saved guest whose listening agent died (a test killed it, the OOM killer did): the
    netlink channel starts an agent of its own, as on a fresh boot, and says so."""
    rig = rig_factory(boot="saved", name="saved-agentless", mlx4_en=False)
    try:
        rig.sh(f"pkill -f '{REMOTE} listen'")
        handle = rig.region("cr-space")
        with caplog.at_level(logging.INFO, logger="rig.devlink.agent"):
            assert handle in {r.handle for r in rig.netlink.regions()}
        said = [r.getMessage() for r in caplog.records]
        assert any("starting an agent" in m for m in said), said
        assert rig.netlink.port is None, "the listening agent is no longer tried"
        assert rig.sh(f"pgrep -f '[{REMOTE[0]}]{REMOTE[1:]} serve'", check=False).status == 0
    finally:
        rig_factory.stop(rig)
