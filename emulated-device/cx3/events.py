"""What the model saw and did: a bounded event log and the crdump records (ground truth).

Events are JSON-ready dicts with a running index, a monotonic timestamp and a kind ("cmd",
"reset", "fault", "crdump", "irq", "doorbell", "clr_int", "error", ...). Indexes keep counting
when old events fall off, so a reader can ask for "everything since N" without gaps going
unnoticed.
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

    def add(self, kind: str, **fields: Value) -> None:
        event: Event = {"index": self.next_index, "t": time.monotonic(), "kind": kind}
        event.update(fields)
        self._events.append(event)
        self.next_index += 1

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
