"""rig.rig.resolve_boot: how a rig's guest starts, from the option, $RIG_BOOT or the default,
and a bad choice in one line."""

from __future__ import annotations

import pytest

from rig import rig as rigmod
from rig.cli import main
from rig.errors import UsageError


def test_the_option_the_environment_then_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(rigmod.BOOT_ENV, raising=False)
    assert rigmod.resolve_boot(None) == rigmod.DEFAULT_BOOT
    monkeypatch.setenv(rigmod.BOOT_ENV, "saved")
    assert rigmod.resolve_boot(None) == "saved"
    assert rigmod.resolve_boot("fresh") == "fresh"  # the option wins over the environment


def test_a_bad_boot_mode_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(UsageError, match=r"^boot mode 'warm': choose one of fresh, saved$"):
        rigmod.resolve_boot("warm")
    monkeypatch.setenv(rigmod.BOOT_ENV, "cold")
    with pytest.raises(UsageError, match=r"^\$RIG_BOOT 'cold': choose one of fresh, saved$"):
        rigmod.resolve_boot(None)


def test_a_bad_rig_boot_ends_a_booting_command_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before anything starts: `rig matrix` and `rig validate` have no --boot of their own,
    their rigs take $RIG_BOOT."""
    monkeypatch.setenv(rigmod.BOOT_ENV, "cold")
    assert main(["run", "--", "true"]) == 2
    assert capsys.readouterr().err == "rig: error: $RIG_BOOT 'cold': choose one of fresh, saved\n"
