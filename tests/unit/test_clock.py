"""rig.vm.clock: which clock a rig runs on, what QEMU is told, and a bad choice in one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from rig.cli import build_parser, main
from rig.errors import UsageError
from rig.vm import clock
from rig.vm.machine import qemu_command
from tests.unit.test_machine_command import PATHS, config, option


def test_the_option_the_environment_then_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(clock.ENV, raising=False)
    assert clock.resolve(None) == clock.DEFAULT
    assert clock.resolve("real") == "real"
    monkeypatch.setenv(clock.ENV, "real")
    assert clock.resolve(None) == "real"
    assert clock.resolve("warp") == "warp"  # the option wins over the environment


def test_a_bad_clock_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(UsageError, match=r"^clock 'fast': choose one of warp, real$"):
        clock.resolve("fast")
    monkeypatch.setenv(clock.ENV, "slow")
    with pytest.raises(UsageError, match=r"^\$RIG_CLOCK 'slow': choose one of warp, real$"):
        clock.resolve(None)


def test_a_bad_rig_clock_ends_a_booting_command_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(clock.ENV, "slow")
    assert main(["run", "--", "true"]) == 2
    err = capsys.readouterr().err
    assert err == "rig: error: $RIG_CLOCK 'slow': choose one of warp, real\n"


def test_every_booting_command_takes_clock_and_setup_does_not() -> None:
    parser = build_parser()
    for command in (["run", "--", "true"], ["replay"], ["up"], ["bench"]):
        args = parser.parse_args([command[0], "--clock", "warp", *command[1:]])
        assert args.clock == "warp"
    with pytest.raises(SystemExit):
        parser.parse_args(["replay", "--clock", "fast"])
    with pytest.raises(SystemExit):
        parser.parse_args(["setup", "--clock", "warp"])


def test_warp_asks_qemu_for_a_paced_sleep_and_real_for_nothing() -> None:
    warp = qemu_command(config(clock="warp"), PATHS)
    [icount] = option(warp, "-icount")
    assert icount.split(",") == [
        f"shift={clock.SHIFT}",
        "sleep=on",
        f"x-sleep-ratio={clock.RATIO}",
    ]
    assert clock.RATIO > 1
    assert "-icount" not in qemu_command(config(clock="real"), PATHS)


def test_another_ratio_from_the_environment_and_a_bad_one_named(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(clock.RATIO_ENV, "50")
    [icount] = option(qemu_command(config(clock="warp"), PATHS), "-icount")
    assert icount.split(",")[-1] == "x-sleep-ratio=50"
    for bad in ("0", "1001", "fast", "2.5"):
        monkeypatch.setenv(clock.RATIO_ENV, bad)
        assert clock.resolve("real") == "real"  # only warp has a ratio
        with pytest.raises(UsageError, match=rf"^\$RIG_WARP_RATIO '{bad}': a whole number"):
            clock.resolve("warp")
    assert main(["run", "--clock", "warp", "--", "true"]) == 2
    assert capsys.readouterr().err.startswith("rig: error: $RIG_WARP_RATIO '2.5': a whole")


def test_another_shift_from_the_environment_and_a_bad_one_named(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(clock.SHIFT_ENV, "1")
    [icount] = option(qemu_command(config(clock="warp"), PATHS), "-icount")
    assert icount.split(",")[0] == "shift=1"
    for bad in ("-1", "11", "auto"):
        monkeypatch.setenv(clock.SHIFT_ENV, bad)
        assert clock.resolve("real") == "real"
        with pytest.raises(UsageError, match=rf"^\$RIG_WARP_SHIFT '{bad}': a whole number from 0"):
            clock.resolve("warp")


def test_a_rig_may_ask_for_its_own_shift() -> None:
    [icount] = option(qemu_command(config(clock="warp", warp_shift=2), PATHS), "-icount")
    assert icount.split(",")[0] == "shift=2"
    assert "-icount" not in qemu_command(config(clock="real", warp_shift=2), PATHS)


def test_warp_on_a_qemu_without_the_ratio_does_not_sleep_at_all() -> None:
    [icount] = option(qemu_command(config(clock="warp", paced_warp=False), PATHS), "-icount")
    assert icount.split(",") == [f"shift={clock.SHIFT}", "sleep=off"]


def test_a_qemu_paces_warp_when_its_help_lists_the_ratio(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def qemu(name: str, help_text: str) -> Path:
        binary = tmp_path / name
        binary.write_text(f"#!/bin/sh\necho '{help_text}'\n")
        binary.chmod(0o755)
        return binary

    assert clock.paces_warp(qemu("patched", "-icount shift=N,sleep=on,x-sleep-ratio=R"))
    assert not caplog.records
    assert not clock.paces_warp(qemu("debian", "-icount [shift=N|auto][,sleep=on|off]"))
    assert "has no -icount x-sleep-ratio" in caplog.text
    assert not clock.paces_warp(tmp_path / "missing")


def test_the_card_works_in_step_with_the_vcpu_on_the_warped_clock_only() -> None:
    assert clock.lockstep("warp")
    assert not clock.lockstep("real")
