"""Patch series for guest kernel builds: find the patches, order them, and apply them.

A series is given as one path:

- a directory with a quilt `series` file: the patches it lists, in its order (`name -pN`
  sets the strip level; `#` starts a comment);
- a directory without one: every *.patch and *.diff in it, sorted by name (the order of
  `git format-patch` numbering and of a shell glob); an empty directory is an empty series;
- a `series` file itself, as above;
- an mbox of several `git format-patch` mails: one patch per mail, in file order;
- any other file: one patch (a format-patch mail or a plain diff).

Patches are applied one by one with `git apply` (strict context, atomic per patch), so a
failure names the patch, and the hunk, that does not apply.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
from dataclasses import dataclass, field
from email.parser import BytesHeaderParser
from pathlib import Path

from rig.errors import ProvisionError

PATCH_SUFFIXES = (".patch", ".diff")
SERIES_FILE = "series"
# A mail's "From " separator line: git format-patch's ("From <sha> Mon Sep 17 00:00:00 2001")
# and classic mbox ("From user@host Sat Jan  3 01:05:34 1996").
_MBOX_FROM = re.compile(rb"^From \S+ +(Mon|Tue|Wed|Thu|Fri|Sat|Sun) ", re.MULTILINE)
_HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")
_GIT_FAILED = re.compile(r"^error: patch failed: (.+):(\d+)$", re.MULTILINE)


class PatchError(ProvisionError):
    """A series that cannot be read or does not apply; the message names patch and hunk."""


@dataclass(frozen=True)
class Hunk:
    number: int  # 1-based, within its file
    old_start: int
    header: str  # the whole @@ line


@dataclass(frozen=True)
class FileChange:
    old: str | None  # path before, after stripping; None for a new file
    new: str | None  # path after; None for a deleted file
    hunks: tuple[Hunk, ...] = ()

    @property
    def path(self) -> str:
        return self.new or self.old or "?"


@dataclass(frozen=True)
class Patch:
    name: str  # file name, or "<mbox> #<n>" for one mail of an mbox
    text: bytes
    strip: int = 1
    subject: str = ""
    changes: tuple[FileChange, ...] = field(default=())

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.text).hexdigest()

    def touched(self) -> set[str]:
        """Every path applying this patch may create, change or delete."""
        return {p for c in self.changes for p in (c.old, c.new) if p is not None}

    def hunk_at(self, path: str, line: int) -> tuple[FileChange, Hunk] | None:
        """The hunk `git apply` means by "patch failed: <path>:<line>" (its old start)."""
        for change in self.changes:
            if path in (change.old, change.new):
                for hunk in change.hunks:
                    if hunk.old_start == line:
                        return change, hunk
        return None


@dataclass(frozen=True)
class Series:
    origin: str  # what the user named, for messages
    patches: tuple[Patch, ...] = ()
    skipped: tuple[str, ...] = ()  # patches without any diff (e.g. a cover letter)

    @property
    def digest(self) -> str:
        """Identity of the series for cache keys: strip levels and contents, in order (names
        do not change what gets built)."""
        h = hashlib.sha256()
        for p in self.patches:
            h.update(f"{p.strip}:{p.digest}\n".encode())
        return h.hexdigest()

    def touched(self) -> set[str]:
        return set().union(*(p.touched() for p in self.patches)) if self.patches else set()

    def describe(self) -> str:
        n = len(self.patches)
        return f"{self.origin} ({n} patch{'es' if n != 1 else ''})"


EMPTY = Series("no patches")


# --- reading -----------------------------------------------------------------------------------


def load_series(path: Path) -> Series:
    """The series at `path` (see the module docstring); PatchError if it cannot be read."""
    if not path.exists():
        raise PatchError(f"patch series {path}: no such file or directory")
    if path.is_dir():
        series_file = path / SERIES_FILE
        if series_file.is_file():
            return _from_series_file(series_file, str(path))
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in PATCH_SUFFIXES)
        return _series(str(path), [_read_patch(p.name, p.read_bytes()) for p in files])
    if path.name == SERIES_FILE:
        return _from_series_file(path, str(path))
    data = path.read_bytes()
    mails = split_mbox(data)
    if len(mails) > 1:
        return _series(
            str(path), [_read_patch(f"{path.name} #{i}", mail) for i, mail in enumerate(mails, 1)]
        )
    return _series(str(path), [_read_patch(path.name, data)])


def _series(origin: str, patches: list[Patch]) -> Series:
    # A series from `git format-patch --cover-letter` starts with a mail that has no diff.
    kept = tuple(p for p in patches if p.changes)
    skipped = tuple(p.name for p in patches if not p.changes)
    return Series(origin, kept, skipped)


def _from_series_file(series_file: Path, origin: str) -> Series:
    patches = []
    for lineno, raw in enumerate(series_file.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name, *opts = line.split()
        strip = 1
        for opt in opts:
            if not re.fullmatch(r"-p\d", opt):
                raise PatchError(f"{series_file}:{lineno}: unsupported option {opt!r} (only -pN)")
            strip = int(opt[2:])
        target = series_file.parent / name
        if not target.is_file():
            raise PatchError(f"{series_file}:{lineno}: patch {name} does not exist")
        patches.append(_read_patch(name, target.read_bytes(), strip))
    return _series(origin, patches)


def split_mbox(data: bytes) -> list[bytes]:
    """The mails of an mbox, in order; data without a "From " line is one mail."""
    starts = [m.start() for m in _MBOX_FROM.finditer(data)]
    if not starts:
        return [data]
    if starts[0] != 0 and data[: starts[0]].strip():
        starts.insert(0, 0)
    return [data[a:b] for a, b in zip(starts, [*starts[1:], len(data)], strict=True)]


def _read_patch(name: str, text: bytes, strip: int = 1) -> Patch:
    subject = ""
    if text.startswith(b"From ") or re.match(rb"^[A-Za-z-]+: ", text):
        headers = BytesHeaderParser().parsebytes(text.split(b"\n\n", 1)[0] + b"\n\n")
        subject = " ".join(str(headers.get("Subject", "")).split())
        subject = re.sub(r"^\[PATCH[^]]*\]\s*", "", subject)
    return Patch(name, text, strip, subject, parse_changes(text.decode("utf-8", "replace"), strip))


def _strip_path(raw: str, strip: int) -> str | None:
    raw = raw.split("\t", 1)[0].strip()
    if raw == "/dev/null":
        return None
    if raw.startswith('"') and raw.endswith('"'):
        raw = raw[1:-1]
    parts = raw.split("/")
    return "/".join(parts[strip:]) if len(parts) > strip else parts[-1]


def parse_changes(text: str, strip: int = 1) -> tuple[FileChange, ...]:
    """The files a patch changes and the hunks it has for each (git or plain unified diff).

    Hunk bodies are skipped by their line counts, so a removed line that reads "-- x" is not
    mistaken for a file header.
    """
    lines = text.splitlines()
    changes: list[FileChange] = []
    old: str | None = None
    new: str | None = None
    hunks: list[Hunk] = []
    in_file = False

    def flush() -> None:
        nonlocal in_file, hunks
        if in_file:
            changes.append(FileChange(old, new, tuple(hunks)))
        in_file, hunks = False, []

    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("diff --git "):
            flush()
            m = re.match(r"^diff --git (\S+) (\S+)$", line)
            old = _strip_path(m.group(1), strip) if m else None
            new = _strip_path(m.group(2), strip) if m else None
            in_file = True
        elif line.startswith("--- ") and i + 1 < len(lines) and lines[i + 1].startswith("+++ "):
            if not in_file or hunks:
                flush()
                in_file = True
            old = _strip_path(line[4:], strip)
            new = _strip_path(lines[i + 1][4:], strip)
            i += 1
        elif in_file and line.startswith("new file mode"):
            old = None
        elif in_file and line.startswith("deleted file mode"):
            new = None
        elif in_file and line.startswith("rename from "):
            old = line[len("rename from ") :]
        elif in_file and line.startswith("rename to "):
            new = line[len("rename to ") :]
        elif in_file and (m := _HUNK.match(line)):
            hunks.append(Hunk(len(hunks) + 1, int(m.group(1)), line))
            old_left = int(m.group(2) or 1)
            new_left = int(m.group(4) or 1)
            while (old_left > 0 or new_left > 0) and i + 1 < len(lines):
                i += 1
                body = lines[i]
                if body.startswith("\\"):  # "\ No newline at end of file"
                    continue
                tag = body[:1]
                if tag in (" ", ""):
                    old_left, new_left = old_left - 1, new_left - 1
                elif tag == "-":
                    old_left -= 1
                elif tag == "+":
                    new_left -= 1
                else:
                    break
        i += 1
    flush()
    return tuple(changes)


# --- applying ----------------------------------------------------------------------------------


def apply_series(series: Series, tree: Path, log: Path) -> None:
    """Apply every patch to `tree` in order; PatchError naming the first one that fails."""
    for index, patch in enumerate(series.patches, 1):
        status, output = _git_apply(patch, tree, log)
        if status != 0:
            raise PatchError(
                f"patch {index}/{len(series.patches)} {patch.name} does not apply: "
                f"{explain_failure(patch, output)}",
                log,
                output,
            )


def _git_apply(patch: Patch, tree: Path, log: Path) -> tuple[int, str]:
    # Outside any repository `git apply` patches plain files; the ceiling keeps it from
    # finding a repository above the tree (a cache inside a checkout) and applying there.
    env = dict(os.environ, GIT_CEILING_DIRECTORIES=str(tree.parent), LC_ALL="C")
    cmd = ["git", "apply", "--verbose", f"-p{patch.strip}", "-"]
    try:
        proc = subprocess.run(
            cmd, cwd=tree, input=patch.text, capture_output=True, env=env, check=False
        )
    except OSError as e:
        raise PatchError(f"cannot run git apply: {e} (install git)") from e
    output = (proc.stdout + proc.stderr).decode("utf-8", "replace")
    with log.open("a") as f:
        f.write(f"\n$ {' '.join(cmd)} < {patch.name}\n{output}")
    return proc.returncode, output


def explain_failure(patch: Patch, output: str) -> str:
    """One line saying which hunk of which file failed, from `git apply`'s output."""
    m = _GIT_FAILED.search(output)
    if m:
        path, line = m.group(1), int(m.group(2))
        found = patch.hunk_at(path, line)
        if found is not None:
            _, hunk = found
            return (
                f"hunk #{hunk.number} of {path} ({hunk.header.strip()}) does not match the source"
            )
        return f"the hunk of {path} at line {line} does not match the source"
    for pattern, why in (
        (r"^error: (.+): No such file or directory$", "{} does not exist in the source"),
        (
            r"^error: (.+): does not exist in (?:index|working directory)$",
            "{} does not exist in the source",
        ),
        (r"^error: (.+): already exists in working directory$", "{} already exists"),
        (r"^error: corrupt patch at line (\d+)$", "the patch is corrupt at its line {}"),
        (r"^error: (.+): patch does not apply$", "{} does not match"),
    ):
        m = re.search(pattern, output, re.MULTILINE)
        if m:
            return why.format(m.group(1))
    last = [ln for ln in output.splitlines() if ln.startswith("error:")]
    return last[-1].removeprefix("error: ") if last else "git apply failed"
