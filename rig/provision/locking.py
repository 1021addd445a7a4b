"""One builder per cache entry across processes: parallel `rig` runs wait, then reuse."""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager

from rig.cache import CacheEntry


@contextmanager
def building(entry: CacheEntry) -> Iterator[bool]:
    """Hold the entry's build lock; yields True if the caller must build it (still missing).

    CacheEntry.build replaces an existing entry, so without this lock a second builder could
    delete an image a running VM of the first one is using.
    """
    lock_dir = entry.root / entry.kind
    lock_dir.mkdir(parents=True, exist_ok=True)
    with (lock_dir / f".{entry.name}-{entry.key}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield not entry.exists()
