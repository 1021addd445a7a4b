"""The guest kernel command line, and that rig-init's way of reading it gets it back."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from rig.vm.cmdline import MAX_LENGTH, CmdlineError, Modprobe, kernel_cmdline


def test_base_arguments() -> None:
    line = kernel_cmdline()
    args = line.split()
    assert "console=ttyS0" in args
    assert "panic=-1" in args
    assert "watchdog_thresh=60" in args  # crdump under INTx is slow, not locked up
    assert "module_blacklist=mlx4_ib" in args  # mlx4_en may load
    assert not any(a.startswith("rig.modprobe") for a in args)


def test_modprobe_arguments_in_order() -> None:
    line = kernel_cmdline(
        [Modprobe("mlx4_core", ("msi_x=1", "num_vfs=1,1,1")), Modprobe("virtio_net")]
    )
    assert line.index('rig.modprobe="mlx4_core msi_x=1 num_vfs=1,1,1"') < line.index(
        'rig.modprobe="virtio_net"'
    )


def test_user_blacklist_is_merged_not_overriding() -> None:
    line = kernel_cmdline(extra=["module_blacklist=foo,mlx4_en", "quiet"])
    assert "module_blacklist=mlx4_ib,foo,mlx4_en" in line.split()
    assert line.count("module_blacklist=") == 1
    assert line.endswith("quiet")


@pytest.mark.parametrize("bad", ['msi_x="1"', "a b", "x=1;reboot", "p=$(id)", "q='1'", "\\x"])
def test_unsafe_parameters_rejected(bad: str) -> None:
    with pytest.raises(CmdlineError):
        Modprobe("mlx4_core", (bad,))


def test_bad_module_name_rejected() -> None:
    with pytest.raises(CmdlineError):
        Modprobe("../evil")


def test_parse() -> None:
    assert Modprobe.parse(" mlx4_core  msi_x=1 ") == Modprobe("mlx4_core", ("msi_x=1",))
    with pytest.raises(CmdlineError):
        Modprobe.parse("   ")


def test_blank_extra_argument_needs_quotes() -> None:
    with pytest.raises(CmdlineError):
        kernel_cmdline(extra=["a b"])


def test_too_long() -> None:
    with pytest.raises(CmdlineError, match="keeps"):
        kernel_cmdline(extra=["x" * MAX_LENGTH])


@pytest.mark.skipif(shutil.which("xargs") is None, reason="needs xargs")
def test_rig_init_reads_modprobe_back_with_xargs() -> None:
    line = kernel_cmdline(
        [Modprobe("mlx4_core", ("msi_x=1", "log_num_mgm_entry_size=-10")), Modprobe("dummy")],
        extra=["quiet"],
    )
    # The very pipeline guest/init/rig-init runs on /proc/cmdline.
    out = subprocess.run(
        ["xargs", "printf", "%s\\n"], input=line, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    requests = [a.removeprefix("rig.modprobe=") for a in out if a.startswith("rig.modprobe=")]
    assert requests == ["mlx4_core msi_x=1 log_num_mgm_entry_size=-10", "dummy"]
