"""Run a selectors loop (vfio-user server and friends) in a background thread for tests."""

from __future__ import annotations

import selectors
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager


@contextmanager
def running_loop(register: Callable[[selectors.BaseSelector], None]) -> Iterator[None]:
    sel = selectors.DefaultSelector()
    register(sel)
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            for key, _ in sel.select(timeout=0.05):
                key.data()

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    try:
        yield
    finally:
        stop.set()
        t.join(timeout=5)
