"""The bounded event log and crdump store."""

from __future__ import annotations

import pytest

from cx3.events import CrdumpStore, EventLog


def test_event_log_is_bounded_and_indexes_keep_counting() -> None:
    log = EventLog(capacity=3)
    for i in range(5):
        log.add("cmd", n=i)
    assert log.next_index == 5
    assert [e["n"] for e in log.since(0)] == [2, 3, 4]  # the oldest fell off
    assert [e["index"] for e in log.since(3)] == [3, 4]
    assert log.since(5) == []


def test_crdump_store_keeps_the_newest() -> None:
    store = CrdumpStore(capacity=2)
    for i in range(3):
        store.capture(bytes([i]), b"h")
    assert [r.index for r in store] == [1, 2]
    assert store.get(2).image == b"\x02"
    with pytest.raises(LookupError, match="no crdump 0"):
        store.get(0)
