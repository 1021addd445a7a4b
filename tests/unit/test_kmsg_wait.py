"""The netlink agent's kernel-log reader (guest/programs/devlink_netlink.py's KernelLog): it
counts kernel messages, never their dictionaries; and the host's reading of its line."""

from __future__ import annotations

import os
import select
import time

import pytest

from guest.programs import devlink_netlink as agent
from rig.devlink.agent import KmsgRecord
from rig.errors import RigError

RECORDS = [
    # /dev/kmsg records: "prefix;message", then dictionary lines that start with a space
    b"6,1,0,-;mlx4_core 0000:00:03.0: first\n SUBSYSTEM=pci\n DEVICE=+pci:0000:00:03.0\n",
    b"6,2,1500000,-;a pci message\n",
    b"3,3,2250000,-;mlx4_core 0000:00:03.0: crdump: err -28\n SUBSYSTEM=pci\n",
]


@pytest.fixture
def kmsg(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """A fake /dev/kmsg holding RECORDS: each read() one record, then EAGAIN; after
    lseek(END) only the last record is still to come."""
    log = list(RECORDS)
    at = [0]

    def read(fd: int, size: int) -> bytes:
        assert fd == 99 and size >= 4096
        if at[0] == len(log):
            raise BlockingIOError
        at[0] += 1
        return log[at[0] - 1]

    def lseek(fd: int, pos: int, whence: int) -> int:
        assert (pos, whence) == (0, os.SEEK_END)
        at[0] = len(log) - 1  # as if the last record came after the reader listened
        return 0

    monkeypatch.setattr(time, "time", lambda: 1000.0)
    monkeypatch.setattr(time, "monotonic", lambda: 10.0)
    monkeypatch.setattr(os, "open", lambda *args: 99)
    monkeypatch.setattr(os, "close", lambda fd: None)
    monkeypatch.setattr(os, "read", read)
    monkeypatch.setattr(os, "lseek", lseek)
    monkeypatch.setattr(select, "select", lambda *a: pytest.fail("waited past the log"))
    return log


def test_dictionary_lines_do_not_count(kmsg: list[bytes]) -> None:
    line = agent.kmsg_wait("pci", 1)
    assert KmsgRecord.parse(line) == KmsgRecord("a pci message", 1.5, 991.5)


def test_the_nth_match_is_given_without_its_dictionary(kmsg: list[bytes]) -> None:
    line = agent.kmsg_wait("mlx4_core", 2)
    assert line == "2250000 990.000000 mlx4_core 0000:00:03.0: crdump: err -28"
    assert KmsgRecord.parse(line).realtime_s == 992.25


def test_from_now_skips_the_log_so_far(kmsg: list[bytes]) -> None:
    log = agent.KernelLog("mlx4_core")
    assert log.found() == "2250000 990.000000 mlx4_core 0000:00:03.0: crdump: err -28"
    assert log.found() is None  # nothing more has come


def test_a_line_that_is_not_a_record_is_named() -> None:
    with pytest.raises(RigError, match="kernel log line is 'Traceback"):
        KmsgRecord.parse("Traceback (most recent call last):")
