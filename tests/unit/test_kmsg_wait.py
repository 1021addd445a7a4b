"""The guest-side kernel-log waiter: it counts kernel messages, never their dictionaries."""

from __future__ import annotations

import os
import shlex
import time
from collections.abc import Iterator

import pytest

from rig.errors import RigError
from rig.rig import KmsgRecord, kmsg_wait_command

RECORDS = [
    # /dev/kmsg records: "prefix;message", then dictionary lines that start with a space
    b"6,1,0,-;mlx4_core 0000:00:03.0: first\n SUBSYSTEM=pci\n DEVICE=+pci:0000:00:03.0\n",
    b"6,2,1500000,-;a pci message\n",
    b"3,3,2250000,-;mlx4_core 0000:00:03.0: crdump: err -28\n SUBSYSTEM=pci\n",
]


def run_waiter(
    pattern: str, nth: int, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> str:
    script = shlex.split(kmsg_wait_command(pattern, nth))[2]  # python3 -c SCRIPT
    records: Iterator[bytes] = iter(RECORDS)
    with monkeypatch.context() as m:
        m.setattr(time, "time", lambda: 1000.0)
        m.setattr(time, "monotonic", lambda: 10.0)
        m.setattr(os, "open", lambda *args: 99)
        m.setattr(os, "read", lambda fd, size: next(records))
        exec(script, {})
    return capsys.readouterr().out


def test_dictionary_lines_do_not_count(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = run_waiter("pci", 1, monkeypatch, capsys)
    assert KmsgRecord.parse(out.strip()) == KmsgRecord("a pci message", 1.5, 991.5)


def test_the_nth_match_is_printed_without_its_dictionary(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = run_waiter("mlx4_core", 2, monkeypatch, capsys)
    assert out == "2250000 990.000000 mlx4_core 0000:00:03.0: crdump: err -28\n"
    assert KmsgRecord.parse(out.strip()).realtime_s == 992.25


def test_a_line_that_is_not_a_record_is_named() -> None:
    with pytest.raises(RigError, match="waiter printed 'Traceback"):
        KmsgRecord.parse("Traceback (most recent call last):")
