"""The guest-side kernel-log waiter: it counts kernel messages, never their dictionaries."""

from __future__ import annotations

import os
import shlex
import time

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
    pattern: str,
    nth: int,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    from_now: bool = False,
) -> str:
    words = shlex.split(kmsg_wait_command(pattern, nth, from_now))  # python3 -S -c SCRIPT
    script = words[words.index("-c") + 1]
    log = list(RECORDS)
    at = [0]  # the reader's place in the log

    def read(fd: int, size: int) -> bytes:
        at[0] += 1
        return log[at[0] - 1]

    def lseek(fd: int, pos: int, whence: int) -> int:
        assert (pos, whence) == (0, os.SEEK_END)
        at[0] = len(log) - 1  # as if the last record came after the waiter listened
        return 0

    with monkeypatch.context() as m:
        m.setattr(time, "time", lambda: 1000.0)
        m.setattr(time, "monotonic", lambda: 10.0)
        m.setattr(os, "open", lambda *args: 99)
        m.setattr(os, "read", read)
        m.setattr(os, "lseek", lseek)
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


def test_a_waiter_from_now_skips_the_log_so_far_and_says_it_listens(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = run_waiter("mlx4_core", 1, monkeypatch, capsys, from_now=True)
    assert out.splitlines() == [
        "listening",
        "2250000 990.000000 mlx4_core 0000:00:03.0: crdump: err -28",
    ]
