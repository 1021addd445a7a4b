"""rig.signals: SIGTERM and SIGHUP end the rig like Ctrl-C, and a teardown is never cut short."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest

from rig import signals
from rig.signals import Interrupted


@pytest.fixture
def handlers() -> Iterator[None]:
    saved = {s: signal.getsignal(s) for s in signals.HANDLED}
    signals.install()
    yield
    for s, handler in saved.items():
        signal.signal(s, handler)


@pytest.mark.parametrize(
    "signum,status,text",
    [
        (signal.SIGTERM, 143, "terminated by SIGTERM"),
        (signal.SIGHUP, 129, "terminated by SIGHUP"),
        (signal.SIGINT, 130, "interrupted by SIGINT"),
    ],
)
def test_each_handled_signal_raises_interrupted(
    handlers: None, signum: int, status: int, text: str
) -> None:
    with pytest.raises(Interrupted) as caught:
        os.kill(os.getpid(), signum)
    assert isinstance(caught.value, KeyboardInterrupt)  # Ctrl-C's clean-up runs for all three
    assert (caught.value.exit_status, str(caught.value)) == (status, text)
    assert str(Interrupted(signum, "report: x")) == f"{text} (report: x)"


def test_a_teardown_holds_a_signal_until_it_is_done(handlers: None) -> None:
    done = []
    with pytest.raises(Interrupted) as caught, signals.deferred():
        os.kill(os.getpid(), signal.SIGTERM)
        done.append("after the signal")
        with signals.deferred():  # nested: held until the outermost ends
            os.kill(os.getpid(), signal.SIGHUP)
        done.append("after the inner block")
    assert done == ["after the signal", "after the inner block"]
    assert caught.value.signum == signal.SIGTERM  # the first one


def test_a_teardown_that_fails_keeps_its_own_error(handlers: None) -> None:
    with pytest.raises(ValueError), signals.deferred():
        os.kill(os.getpid(), signal.SIGTERM)
        raise ValueError("the teardown's own failure")
    with signals.deferred():
        pass  # the held signal went with that failure: nothing is raised later
