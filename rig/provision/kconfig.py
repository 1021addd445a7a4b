"""The guest kernel's configuration: `make tinyconfig`, the rig's fragment merged on top with
scripts/kconfig/merge_config.sh, `make olddefconfig`, then a check that every line of the
fragment stuck.

Kconfig drops a requested value silently when a dependency is missing, when the symbol has no
prompt and nothing selects it, or when it does not exist in this kernel; the check turns that
into an error naming each such line.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rig.errors import ProvisionError
from rig.progress import run_logged

BASE_TARGET = "tinyconfig"
_SET = re.compile(r"^CONFIG_([A-Za-z0-9_]+)=(.*)$")
_UNSET = re.compile(r"^# CONFIG_([A-Za-z0-9_]+) is not set$")
_KCONFIG_SYMBOL = re.compile(r"^\s*(?:menu)?config\s+([A-Za-z0-9_]+)\s*$", re.MULTILINE)


class FragmentError(ProvisionError):
    """A fragment that cannot be read, or whose settings did not survive olddefconfig."""


@dataclass(frozen=True)
class Setting:
    symbol: str  # without CONFIG_
    value: str | None  # "y", "m", '"text"', "0x10"; None for "is not set"

    def line(self) -> str:
        if self.value is None:
            return f"# CONFIG_{self.symbol} is not set"
        return f"CONFIG_{self.symbol}={self.value}"


@dataclass(frozen=True)
class Unstuck:
    """A fragment setting that the final .config does not have."""

    wanted: Setting
    got: str | None  # the .config's value, None if unset or absent
    exists: bool | None = None  # whether any Kconfig file defines the symbol (None: unknown)

    def describe(self) -> str:
        got = "is not set" if self.got is None else f"={self.got}"
        why = ""
        if self.exists is False:
            why = " (no Kconfig file defines this symbol in this source)"
        elif self.exists is True and self.wanted.value is not None:
            why = " (a dependency is missing, or it has no prompt and nothing selects it)"
        return (
            f"{self.wanted.line()} did not stick: .config has "
            f"CONFIG_{self.wanted.symbol} {got}{why}"
        )


def parse_fragment(text: str, name: str = "fragment") -> dict[str, Setting]:
    """The settings of a fragment, later lines overriding earlier ones.

    FragmentError for a line that is neither a setting, a comment nor blank: Kconfig would
    read `CONFIG_X=y # why` as the value "y # why".
    """
    settings: dict[str, Setting] = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if m := _SET.match(line):
            value = m.group(2)
            if re.search(r"\s#", value) and not value.startswith('"'):
                raise FragmentError(
                    f"{name}:{lineno}: comment after a value ({line!r}); put "
                    "comments on their own line"
                )
            settings[m.group(1)] = Setting(m.group(1), None if value == "n" else value)
        elif m := _UNSET.match(line):
            settings[m.group(1)] = Setting(m.group(1), None)
        elif line and not line.startswith("#"):
            raise FragmentError(f"{name}:{lineno}: not a Kconfig setting: {line!r}")
    return settings


def parse_config(text: str) -> dict[str, str | None]:
    """A .config's values; "is not set" lines map to None (absent symbols are not listed)."""
    values: dict[str, str | None] = {}
    for line in text.splitlines():
        if m := _SET.match(line):
            values[m.group(1)] = None if m.group(2) == "n" else m.group(2)
        elif m := _UNSET.match(line):
            values[m.group(1)] = None
    return values


def unstuck(fragment: dict[str, Setting], config: dict[str, str | None]) -> list[Unstuck]:
    """The fragment's settings that the .config does not carry, in fragment order."""
    return [
        Unstuck(s, config.get(sym)) for sym, s in fragment.items() if config.get(sym) != s.value
    ]


def kconfig_symbols(source: Path) -> set[str]:
    """Every symbol some Kconfig file of the source tree defines."""
    found: set[str] = set()
    for dirpath, dirnames, files in os.walk(source):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in files:
            if name.startswith("Kconfig"):
                text = (Path(dirpath) / name).read_text(errors="replace")
                found.update(_KCONFIG_SYMBOL.findall(text))
    return found


@dataclass(frozen=True)
class Fragments:
    """The fragments to merge, in order, with their combined settings."""

    paths: tuple[Path, ...]
    settings: dict[str, Setting]
    digest: str

    @classmethod
    def load(cls, paths: Sequence[Path]) -> Fragments:
        settings: dict[str, Setting] = {}
        h = hashlib.sha256()
        for path in paths:
            try:
                text = path.read_text()
            except OSError as e:
                raise FragmentError(f"config fragment {path}: {e}") from e
            settings.update(parse_fragment(text, str(path)))
            h.update(hashlib.sha256(text.encode()).digest())
        return cls(tuple(p.resolve() for p in paths), settings, h.hexdigest())


def configure(
    make: Sequence[str], source: Path, out: Path, fragments: Fragments, log: Path
) -> Path:
    """Write `out`/.config: tinyconfig + fragments + olddefconfig; FragmentError listing every
    setting that did not stick. `make` is the make command line with O=`out` and ARCH."""
    out.mkdir(parents=True, exist_ok=True)
    config = out / ".config"
    config.unlink(missing_ok=True)
    run_logged([*make, BASE_TARGET], log, f"make {BASE_TARGET}")
    # -m: merge only; olddefconfig below resolves what the fragment's values imply.
    run_logged(
        [source / "scripts" / "kconfig" / "merge_config.sh", "-m", config, *fragments.paths],
        log,
        "merge_config.sh",
        cwd=out,
        env={"KCONFIG_CONFIG": str(config)},
    )
    run_logged([*make, "olddefconfig"], log, "make olddefconfig")
    missing = unstuck(fragments.settings, parse_config(config.read_text()))
    if missing:
        known = kconfig_symbols(source)
        missing = [Unstuck(u.wanted, u.got, u.wanted.symbol in known) for u in missing]
        with log.open("a") as f:
            f.write("\nfragment settings that did not stick:\n")
            f.writelines(f"  {u.describe()}\n" for u in missing)
        raise FragmentError(
            f"{len(missing)} config fragment setting(s) did not stick after olddefconfig:\n"
            + "\n".join(f"  {u.describe()}" for u in missing),
            log,
        )
    return config
