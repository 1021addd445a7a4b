"""rig/devicemodel.py with the real model process: a crash must not pass for a teardown."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from rig.devicemodel import DeviceModel
from rig.errors import DeviceModelError


def test_a_clean_stop_says_nothing(tmp_path: Path) -> None:
    model = DeviceModel(tmp_path, tmp_path)
    model.start()
    model.control.ping()
    model.stop()
    assert not model.socket.exists() and not model.control_socket.exists()
    assert "stopped by SIGTERM" in model.log.read_text()
    model.stop()  # again: nothing more to do or say


def test_a_model_that_crashed_is_reported_at_stop(tmp_path: Path) -> None:
    model = DeviceModel(tmp_path, tmp_path)
    model.start()
    assert model.proc is not None
    os.kill(model.proc.pid, signal.SIGBUS)  # as a DMA into a shrunk memfd once did
    model.proc.wait()
    with pytest.raises(DeviceModelError) as e:
        model.stop()
    assert "device model exited with signal SIGBUS" in str(e.value)
    assert str(model.log) in str(e.value)
    assert not model.socket.exists() and not model.control_socket.exists()
    model.stop()  # reported once


def test_a_model_that_does_not_stop_is_killed_and_reported(tmp_path: Path) -> None:
    model = DeviceModel(tmp_path, tmp_path)
    model.start()
    assert model.proc is not None
    os.kill(model.proc.pid, signal.SIGSTOP)  # a hung model: SIGTERM waits, SIGKILL does not
    with pytest.raises(DeviceModelError) as e:
        model.stop(timeout=0.5)
    assert "did not stop within 0.5 s of SIGTERM; killed" in str(e.value)
