"""What the model saw and did: a bounded event log and the crdump records (ground truth).

Events are JSON-ready dicts with a running index, a monotonic timestamp and a kind ("cmd",
"reset", "fault", "crdump", "irq", "doorbell", "clr_int", "error", ...). Indexes keep counting
when old events fall off, so a reader can ask for "everything since N" without gaps going
unnoticed.

Per-frame events (send and CQ doorbells, completion interrupts and the EQ doorbells that
acknowledge them) are "hot": thousands a second under traffic would push every rare event
out of the log. Of each (kind, queue) only the 1st, 2nd, 4th, 8th, ... is logged, with its
running count `n`; the tallies restart at a device reset, so the first doorbells of the
queues the driver rebuilds afterwards are always in the log.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Iterator

from .wire import Crdump

Value = str | int | float | bool | None
Event = dict[str, Value]


class EventLog:
    def __init__(self, capacity: int) -> None:
        self._events: collections.deque[Event] = collections.deque(maxlen=capacity)
        self.next_index = 0
        self.tallies: collections.Counter[tuple[str, int]] = collections.Counter()

    def add(self, kind: str, **fields: Value) -> None:
        event: Event = {"index": self.next_index, "t": time.monotonic(), "kind": kind}
        event.update(fields)
        self._events.append(event)
        self.next_index += 1

    def hot(self, kind: str, queue: int, **fields: Value) -> None:
        """A per-frame event on `queue`: logged when its running count is a power of two."""
        key = (kind, queue)
        self.tallies[key] += 1
        n = self.tallies[key]
        if n & (n - 1) == 0:
            self.add(kind, n=n, **fields)

    def restart_tallies(self) -> None:
        self.tallies.clear()

    def since(self, index: int) -> list[Event]:
        first = self.next_index - len(self._events)
        return list(self._events)[max(0, index - first) :]


class CrdumpStore:
    def __init__(self, capacity: int) -> None:
        self._records: collections.deque[Crdump] = collections.deque(maxlen=capacity)
        self.next_index = 0

    def capture(self, image: bytes, health: bytes) -> Crdump:
        record = Crdump(self.next_index, time.monotonic(), image, health)
        self._records.append(record)
        self.next_index += 1
        return record

    def __iter__(self) -> Iterator[Crdump]:
        return iter(self._records)

    def get(self, index: int) -> Crdump:
        for record in self._records:
            if record.index == index:
                return record
        raise LookupError(f"no crdump {index} (kept: {[r.index for r in self._records]})")
