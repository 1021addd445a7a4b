"""rig.jobs.readers: the reader rows, from mstregdump's output and from the snapshots'
comparisons (the guest run itself is e2e: tests/e2e/test_replay.py)."""

from __future__ import annotations

import os

from cx3 import layout
from rig.formats.mstdump import format_mstdump
from rig.formats.report import Comparison
from rig.jobs.readers import LiveDump, check_mstregdump, snapshot_reader

ADDRESSES = [0x1000, 0x1004, layout.HCR_OFFSET, layout.HW_DEV_ID, 0x40000]


def device() -> bytearray:
    bar0 = bytearray(os.urandom(layout.SIZE))
    bar0[layout.HW_DEV_ID : layout.HW_DEV_ID + 4] = layout.CONNECTX3_HW_DEV_ID.to_bytes(4, "big")
    return bar0


def live(text: str, bar0: bytes, status: int = 0, stderr: str = "") -> LiveDump:
    return LiveDump("mstregdump 0000:00:03.0", status, text, stderr, bar0, 1.5)


def test_a_dump_equal_to_the_device_but_for_a_moving_register_agrees() -> None:
    bar0 = device()
    text = format_mstdump(bytes(bar0), ADDRESSES)
    bar0[layout.HCR_OFFSET] ^= 0x01  # the HCR moved on after mstregdump read it
    row, pair = check_mstregdump(live(text, bytes(bar0)))
    assert row.ok and not row.problem and row.compared_bytes == 4 * len(ADDRESSES)
    assert [c["register"] for c in row.explained] == ["HCR"]
    assert pair is not None and pair.registers_explain and pair.a_data == bytes(bar0)


def test_a_wrong_dword_fails_the_reader_at_its_offset() -> None:
    bar0 = device()
    text = format_mstdump(bytes(bar0), ADDRESSES)
    bar0[0x40002] ^= 0x80
    row, _ = check_mstregdump(live(text, bytes(bar0)))
    assert not row.ok and row.first_unexplained == [0x40002] and row.unexplained_bytes == 1
    assert row.problem == "read what the device did not hold at 0x40002"


def test_no_dump_is_a_failed_reader_saying_why() -> None:
    bar0 = bytes(device())
    good = format_mstdump(bar0, ADDRESSES)
    for text, status, said in (
        ("", 1, "exit 1: Unable to open device"),
        (good + "-E- Cr read (0x00050000) failed: Bad address(14)\n", 0, "truncated capture"),
        (good.replace("000001f5", "000001f7"), 0, "ConnectX-3 Pro"),
    ):
        row, pair = check_mstregdump(live(text, bar0, status, "Unable to open device"))
        assert not row.ok and pair is None
        assert row.problem.startswith("gave no dump: ") and said in row.problem, row


def test_snapshot_readers_from_the_comparisons() -> None:
    same = Comparison("truth", "cli", True, 0)
    wrong = Comparison("truth", "netlink", False, 3, [0x12345, 0x12346, 0x12347])
    rows = [
        ("cr-space", 0, layout.SIZE, [same, wrong]),
        ("fw-health", 0, 64, [same, Comparison("truth", "netlink", True, 0)]),
    ]
    cli = snapshot_reader("devlink CLI", "cli", rows)
    assert cli.ok and cli.compared_bytes == layout.SIZE + 64
    assert cli.reads == "after the fault: cr-space snapshot 0, fw-health snapshot 0"
    nl = snapshot_reader("pyroute2 netlink", "netlink", rows)
    assert (
        not nl.ok
        and nl.unexplained_bytes == 3
        and nl.first_unexplained == [0x12345, 0x12346, 0x12347]
    )
    assert nl.problem == "cr-space: 3 bytes differ from the capture"
