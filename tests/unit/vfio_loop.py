"""Run a selectors loop (vfio-user server and friends) in a background thread for tests."""

from __future__ import annotations

import selectors
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol


class Background(Protocol):
    """A vfio_user.Server's background work, as the model's main loop runs it."""

    def has_work(self) -> bool: ...

    def work(self) -> None: ...

    def idle(self) -> bool: ...


def wait_idle(server: Background, timeout: float = 5.0) -> None:
    """Until the loop thread has run every step of the server's background work."""
    deadline = time.monotonic() + timeout
    while not server.idle():
        if time.monotonic() > deadline:
            raise TimeoutError("the server's background work did not finish")
        time.sleep(0.0005)


@contextmanager
def running_loop(
    register: Callable[[selectors.BaseSelector], None], background: Background | None = None
) -> Iterator[None]:
    sel = selectors.DefaultSelector()
    register(sel)
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():  # as cx3/__main__.py's loop
            busy = background is not None and background.has_work()
            for key, _ in sel.select(timeout=0 if busy else 0.05):
                key.data()
            if background is not None and background.has_work():
                background.work()

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    try:
        yield
    finally:
        stop.set()
        t.join(timeout=5)
