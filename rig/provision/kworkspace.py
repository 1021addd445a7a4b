"""Kernel build workspaces: one unpacked source tree and its object directory per source,
kept between builds so that the patched build after the base build (and the next revision of
a patch after that) recompiles only the files the patches touch.

Patches are applied in place, after saving every file they touch; those files are put back
when the build ends, or when the next build finds an interrupted one's leftovers. Restored
files get a new mtime, so make recompiles whatever a patch had changed.

Workspaces live under <cache>/kbuild-work; only the KEEP most recently used are kept. A
workspace is keyed by the source's identity: a user's tree that changed gets a new one, and
so a full build.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rig.cache import cache_root
from rig.progress import step
from rig.provision.ksource import ResolvedSource, populate
from rig.provision.patchseries import PatchError, Series, apply_series

WORK_DIR = "kbuild-work"
KEEP = 2
READY = ".ready"  # written once src/ is complete; its mtime records the last use
APPLIED = "applied.json"


def workspace_name(source: ResolvedSource) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", source.label.strip("/"))[-48:]
    return f"{slug}-{hashlib.sha256(source.identity.encode()).hexdigest()[:12]}"


def safe_relative(path: str) -> bool:
    """A patch may only touch paths inside the tree."""
    parts = Path(path).parts
    return bool(parts) and not Path(path).is_absolute() and ".." not in parts


class Workspace:
    def __init__(self, root: Path, variant: str = "") -> None:
        self.root = root
        self.src = root / "src"
        # A variant (the coverage kernel) has object trees of its own: its .config differs,
        # and sharing obj/ would make every switch a full rebuild.
        suffix = f"-{variant}" if variant else ""
        self.obj = root / f"obj{suffix}"  # O= of the build
        self.cfg = root / f"cfg{suffix}"  # O= of configuration runs, kept apart so that only a
        # changed .config reaches obj/ (an unchanged one must not trigger rebuilds)
        self.saved = root / "saved"
        self.applied = root / APPLIED

    @classmethod
    @contextmanager
    def open(
        cls, source: ResolvedSource, log: Path, base: Path | None = None, variant: str = ""
    ) -> Iterator[Workspace]:
        """The workspace for `source`, locked for this process, with a pristine tree."""
        base = base or cache_root() / WORK_DIR
        base.mkdir(parents=True, exist_ok=True)
        name = workspace_name(source)
        with (base / f".{name}.lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            ws = cls(base / name, variant)
            if not (ws.root / READY).is_file():
                shutil.rmtree(ws.root, ignore_errors=True)
                ws.root.mkdir(parents=True)
                with step(f"setting up a build workspace for {source.label}"):
                    populate(source, ws.src, log)
                (ws.root / READY).write_text(source.label + "\n")
            ws.restore()
            os.utime(ws.root / READY)
            try:
                yield ws
            finally:
                ws.restore()
        prune(base, KEEP)

    def is_cold(self) -> bool:
        """Nothing built here yet: the next build compiles everything."""
        return not (self.obj / "vmlinux").exists()

    def apply(self, series: Series, log: Path) -> None:
        """Save what the series touches, then apply it (PatchError names the failing hunk)."""
        touched = sorted(series.touched())
        bad = [p for p in touched if not safe_relative(p)]
        if bad:
            raise PatchError(
                f"{series.origin}: patches touch paths outside the tree: {', '.join(bad)}"
            )
        records = []
        for rel in touched:
            target = self.src / rel
            existed = target.exists() or target.is_symlink()
            if existed:
                saved = self.saved / rel
                saved.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(target, saved, follow_symlinks=False)
            records.append({"path": rel, "existed": existed})
        # Written before the first patch: an interrupted apply is still undone next time.
        self.applied.write_text(json.dumps({"series": series.origin, "files": records}))
        apply_series(series, self.src, log)

    def append(self, additions: dict[str, str]) -> None:
        """Append text to files of the tree (after apply(), if any), saved and put back at
        the end like a patch's files."""
        applied = json.loads(self.applied.read_text()) if self.applied.is_file() else {}
        records = applied.get("files", [])
        saved_already = {r["path"] for r in records}
        for rel in sorted(additions):
            if not safe_relative(rel) or not (self.src / rel).is_file():
                raise PatchError(f"cannot append to {rel}: not a file of the tree")
            if rel not in saved_already:
                saved = self.saved / rel
                saved.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(self.src / rel, saved)
                records.append({"path": rel, "existed": True})
        self.applied.write_text(json.dumps({"series": applied.get("series", ""), "files": records}))
        for rel, text in additions.items():
            with (self.src / rel).open("a") as f:
                f.write(text)

    def restore(self) -> None:
        """Put back every file the applied series touched (no-op when none is applied)."""
        if not self.applied.is_file():
            return
        for record in json.loads(self.applied.read_text())["files"]:
            target = self.src / record["path"]
            if target.is_symlink() or target.exists():
                target.unlink()
            if record["existed"]:
                saved = self.saved / record["path"]
                target.parent.mkdir(parents=True, exist_ok=True)
                if saved.is_symlink():
                    os.symlink(os.readlink(saved), target)
                else:
                    # copyfile, not copy2: the restored file must look newer than the objects
                    # built from the patched one, or make would keep them.
                    shutil.copyfile(saved, target)
                    shutil.copymode(saved, target)
        shutil.rmtree(self.saved, ignore_errors=True)
        self.applied.unlink()


def prune(base: Path, keep: int) -> list[Path]:
    """Delete all but the `keep` most recently used workspaces that nobody holds."""
    ready = sorted(
        (p for p in base.glob(f"*/{READY}")), key=lambda p: p.stat().st_mtime, reverse=True
    )
    removed = []
    for marker in ready[keep:]:
        root = marker.parent
        with (base / f".{root.name}.lock").open("w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # in use by another build
            # The lock file stays: a process already waiting on it must keep excluding others.
            shutil.rmtree(root, ignore_errors=True)
            removed.append(root)
    return removed
