"""The provisioning cache: one directory per artifact, keyed by every input that shapes it.

An entry is built in a temporary sibling directory and renamed into place only when complete,
so an interrupted build never leaves a half entry that a later run would trust.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MANIFEST = "rig-entry.json"


def cache_root() -> Path:
    """$RIG_CACHE, else $XDG_CACHE_HOME/mlx4-rig, else ~/.cache/mlx4-rig."""
    if env := os.environ.get("RIG_CACHE"):
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "mlx4-rig"


def cache_key(inputs: dict[str, Any]) -> str:
    """A short stable hash of an entry's inputs (order of keys does not matter)."""
    blob = json.dumps(inputs, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def write_atomically(path: Path, text: str) -> None:
    """`text` into `path` whole or not at all: rigs side by side read and write the same
    cache files. OSError if it cannot be written (the temporary file is not left)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def tree_listing(directory: Path) -> Iterator[bytes]:
    """One line per file under `directory` (its path there, size and mtime), in a stable
    order: what identifies a user's tree cheaply, without reading every byte, wherever the tree
    is (a copy that keeps mtimes is the same tree)."""
    for dirpath, dirnames, files in os.walk(directory):
        dirnames.sort()
        for name in sorted(files):
            path = Path(dirpath) / name
            st = path.lstat()
            yield f"{path.relative_to(directory)}:{st.st_size}:{st.st_mtime_ns}\n".encode()


@dataclass(frozen=True)
class CacheEntry:
    """One keyed artifact directory, e.g. ~/.cache/mlx4-rig/qemu/10.2.2-<key>."""

    kind: str
    name: str
    inputs: dict[str, Any]
    root: Path

    @property
    def key(self) -> str:
        return cache_key(self.inputs)

    @property
    def path(self) -> Path:
        return self.root / self.kind / f"{self.name}-{self.key}"

    def exists(self) -> bool:
        return (self.path / MANIFEST).is_file()

    def manifest(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.path / MANIFEST).read_text())
        return data

    @contextmanager
    def build(self) -> Iterator[Path]:
        """Yield an empty staging directory; on success it becomes the entry, atomically."""
        (self.root / self.kind).mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f".{self.name}-", dir=self.root / self.kind))
        try:
            yield stage
            (stage / MANIFEST).write_text(
                json.dumps({"kind": self.kind, "name": self.name, "inputs": self.inputs}, indent=2)
            )
            if self.path.exists():
                shutil.rmtree(self.path)
            stage.rename(self.path)
        finally:
            if stage.exists():
                shutil.rmtree(stage, ignore_errors=True)


def entry(kind: str, name: str, inputs: dict[str, Any], root: Path | None = None) -> CacheEntry:
    return CacheEntry(kind, name, inputs, root or cache_root())


def list_entries(root: Path | None = None) -> list[tuple[str, Path, int]]:
    """(kind, path, size in bytes) of every complete entry, for `rig setup` to show."""
    root = root or cache_root()
    found = []
    for manifest in sorted(root.glob(f"*/*/{MANIFEST}")):
        d = manifest.parent
        size = sum(p.stat().st_size for p in d.rglob("*") if p.is_file() and not p.is_symlink())
        found.append((d.parent.name, d, size))
    return found
