"""rig.settings: a setting from the option, else the environment, else the default, and a bad
one named in one line; the boot mode ($RIG_BOOT) as the commands see it."""

from __future__ import annotations

import pytest

from rig import settings
from rig.cli import main
from rig.errors import UsageError
from rig.rig import BOOT_ENV, DEFAULT_BOOT, resolve_boot

MODES = ("fresh", "saved")


def test_the_option_then_the_environment_then_the_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("RIG_X", raising=False)
    assert settings.choice(None, "x", "RIG_X", "saved", MODES) == "saved"
    monkeypatch.setenv("RIG_X", "fresh")
    assert settings.choice(None, "x", "RIG_X", "saved", MODES) == "fresh"
    assert settings.choice("saved", "x", "RIG_X", "fresh", MODES) == "saved"  # option wins
    with pytest.raises(UsageError, match=r"^boot mode 'warm': choose one of fresh, saved$"):
        settings.choice("warm", "boot mode", "RIG_X", "saved", MODES)
    monkeypatch.setenv("RIG_X", "cold")
    with pytest.raises(UsageError, match=r"^\$RIG_X 'cold': choose one of fresh, saved$"):
        settings.choice(None, "x", "RIG_X", "saved", MODES)


@pytest.mark.parametrize(
    ("text", "most", "problem"),
    [("0", None, "of at least 1"), ("x", None, "of at least 1"), ("11", 10, "from 1 to 10")],
)
def test_a_bad_count_is_named(
    monkeypatch: pytest.MonkeyPatch, text: str, most: int | None, problem: str
) -> None:
    monkeypatch.setenv("RIG_N", text)
    with pytest.raises(UsageError, match=rf"^\$RIG_N '{text}': a whole number {problem}$"):
        settings.count("RIG_N", 3, most)


def test_a_count_from_the_environment_or_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RIG_N", raising=False)
    assert settings.count("RIG_N", 3) == 3
    monkeypatch.setenv("RIG_N", " 10 ")
    assert settings.count("RIG_N", 3, 10) == 10


def test_the_boot_mode_and_a_bad_rig_boot_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before anything starts: `rig matrix` and `rig validate` have no --boot of their own,
    their rigs take $RIG_BOOT."""
    monkeypatch.delenv(BOOT_ENV, raising=False)
    assert resolve_boot(None) == DEFAULT_BOOT == "saved"
    monkeypatch.setenv(BOOT_ENV, "cold")
    assert main(["run", "--", "true"]) == 2
    assert capsys.readouterr().err == "rig: error: $RIG_BOOT 'cold': choose one of fresh, saved\n"
