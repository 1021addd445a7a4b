"""One builder per cache entry across processes: parallel `rig` runs wait, then reuse."""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rig.cache import CacheEntry


@contextmanager
def building(entry: CacheEntry) -> Iterator[bool]:
    """Hold the entry's build lock; yields True if the caller must build it (still missing).

    CacheEntry.build replaces an existing entry, so without this lock a second builder could
    delete an image a running VM of the first one is using.
    """
    lock_path(entry.path).parent.mkdir(parents=True, exist_ok=True)
    with lock_path(entry.path).open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield not entry.exists()


@contextmanager
def unless_building(path: Path) -> Iterator[bool]:
    """Hold the build lock of the entry at `path` if nobody does; yields whether it is held
    (False: a process is building or checking that entry, so leave it alone)."""
    with lock_path(path).open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True


def lock_path(path: Path) -> Path:
    """The build lock of the cache entry at `path` (<root>/<kind>/<name>-<key>): beside it,
    not in it, since a build replaces the entry's directory."""
    return path.parent / f".{path.name}.lock"
