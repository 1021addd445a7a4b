"""The guest kernel's configuration: `make tinyconfig`, the rig's fragment merged on top with
scripts/kconfig/merge_config.sh, `make olddefconfig`, then a check that every line of the
fragment stuck.

Kconfig drops a requested value silently when a dependency is missing, when the symbol has no
prompt and nothing selects it, or when it does not exist in this kernel; the check turns that
into an error naming each such line.

One fragment serves every kernel the rig builds (6.1 to the newest): a setting whose symbol a
later kernel removed carries a directive comment on the line before it,

    # rig: removed in 6.2
    CONFIG_RANDOM_TRUST_CPU=y

and is checked as usual before that version, and from it on checked to be gone (no Kconfig
file defines it), so the note cannot outlive the truth. Kconfig reads the directive as a
comment.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from rig.errors import ProvisionError
from rig.progress import run_logged
from rig.provision.ksource import kernel_version

BASE_TARGET = "tinyconfig"
_SET = re.compile(r"^CONFIG_([A-Za-z0-9_]+)=(.*)$")
_UNSET = re.compile(r"^# CONFIG_([A-Za-z0-9_]+) is not set$")
_KCONFIG_SYMBOL = re.compile(r"^\s*(?:menu)?config\s+([A-Za-z0-9_]+)\s*$", re.MULTILINE)
_DIRECTIVE = re.compile(r"^#\s*rig:\s*(.*)$")
_REMOVED_IN = re.compile(r"^removed in (\d+)\.(\d+)$")

Version = tuple[int, int]


class FragmentError(ProvisionError):
    """A fragment that cannot be read, or whose settings did not survive olddefconfig."""


@dataclass(frozen=True)
class Setting:
    symbol: str  # without CONFIG_
    value: str | None  # "y", "m", '"text"', "0x10"; None for "is not set"
    removed_in: Version | None = None  # the kernel (major, minor) that dropped the symbol

    def applies_to(self, kernel: Version) -> bool:
        return self.removed_in is None or kernel < self.removed_in

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
    removed_in: Version | None = None  # from a directive, for the next setting
    directive_line = 0
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if m := _DIRECTIVE.match(line):
            if removed_in is not None:
                raise FragmentError(f"{name}:{directive_line}: directive not followed by a setting")
            removed_in, directive_line = _parse_directive(m.group(1), f"{name}:{lineno}"), lineno
            continue
        setting: Setting | None = None
        if m := _SET.match(line):
            value = m.group(2)
            if re.search(r"\s#", value) and not value.startswith('"'):
                raise FragmentError(
                    f"{name}:{lineno}: comment after a value ({line!r}); put "
                    "comments on their own line"
                )
            setting = Setting(m.group(1), None if value == "n" else value)
        elif m := _UNSET.match(line):
            setting = Setting(m.group(1), None)
        elif line and not line.startswith("#"):
            raise FragmentError(f"{name}:{lineno}: not a Kconfig setting: {line!r}")
        if setting is not None:
            settings[setting.symbol] = replace(setting, removed_in=removed_in)
            removed_in = None
        elif removed_in is not None:  # the directive must sit right above its line
            raise FragmentError(f"{name}:{directive_line}: directive not followed by a setting")
    if removed_in is not None:
        raise FragmentError(f"{name}:{directive_line}: directive not followed by a setting")
    return settings


def _parse_directive(text: str, where: str) -> Version:
    if m := _REMOVED_IN.match(text.strip()):
        return int(m.group(1)), int(m.group(2))
    raise FragmentError(f"{where}: unknown directive {text!r} (known: 'rig: removed in X.Y')")


def kernel_series(version: str) -> Version:
    """(major, minor) of a kernel version such as "6.12.118"."""
    major, minor = version.split(".")[:2]
    return int(major), int(minor)


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


def applicable(fragment: dict[str, Setting], kernel: Version) -> dict[str, Setting]:
    """The settings meant for `kernel`: those its version has not seen removed."""
    return {sym: s for sym, s in fragment.items() if s.applies_to(kernel)}


def still_defined(
    fragment: dict[str, Setting], kernel: Version, symbols: set[str]
) -> list[Setting]:
    """Settings marked removed by `kernel` whose symbol this source still defines."""
    return [s for s in fragment.values() if not s.applies_to(kernel) and s.symbol in symbols]


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
    kernel = kernel_series(kernel_version((source / "Makefile").read_text(errors="replace")))
    if applicable(fragments.settings, kernel) != fragments.settings:
        stale = still_defined(fragments.settings, kernel, kconfig_symbols(source))
        if stale:
            raise FragmentError(
                "config fragment setting(s) marked removed are still defined in this "
                f"{kernel[0]}.{kernel[1]} source:\n"
                + "\n".join(
                    f"  {s.line()} (marked 'removed in {s.removed_in[0]}.{s.removed_in[1]}')"
                    for s in stale
                    if s.removed_in is not None
                ),
                log,
            )
    missing = unstuck(applicable(fragments.settings, kernel), parse_config(config.read_text()))
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
