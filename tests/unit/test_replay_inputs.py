"""`rig replay` refuses a bad input with one line naming the file, line and reason, exit 2,
before any VM boots: the runs below name a QEMU that does not exist, so an input the job let
through would fail on QEMU instead, with another message."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from rig import cli
from rig.formats.mstdump import HW_DEV_ID
from tests.browser import dump_dom

GOOD_ID = f"0x{HW_DEV_ID:08x} 0x000001f5\n"


def replay(tmp_path: Path, *args: str) -> tuple[int, list[str], dict[str, object]]:
    out = tmp_path / "run"
    status = cli.main(
        ["replay", *args, "--qemu", str(tmp_path / "no-such-qemu"), "--out", str(out)]
    )
    report = json.loads((out / "report.json").read_text())
    return status, list(report["errors"]), report


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (
            "0x00001000 0x00000001\n-E- Cr read (0x00001004) failed: Bad address(14)\n",
            ":2: truncated capture: mstregdump stopped with '-E- Cr read (0x00001004) failed",
        ),
        (
            f"0x00001000 0x00000000\n0x{HW_DEV_ID:08x} 0x000101f7\n",
            ":2: hw_dev_id 0x1f7 at 0xf0014 is a ConnectX-3 Pro; the rig emulates a "
            "ConnectX-3 (0x1f5)",
        ),
        (
            GOOD_ID + "0x00001000 0x0000zz00\n",
            ":2: bad value '0x0000zz00' at 0x1000: not 0x and at most 8 hex digits",
        ),
    ],
)
def test_bad_mstregdump_is_one_line_exit_2_before_boot(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, reason: str
) -> None:
    dump = tmp_path / "crash.mstdump"
    dump.write_text(content)
    status, errors, report = replay(tmp_path, "--crspace", str(dump))
    assert status == 2
    assert len(errors) == 1 and errors[0].startswith(f"{dump}{reason}"), errors
    stderr = capsys.readouterr().err
    assert [line for line in stderr.splitlines() if "error" in line] == [f"rig: error: {errors[0]}"]
    assert "Traceback" not in stderr
    assert report["versions"] == {"rig": report["versions"]["rig"]}  # type: ignore[index]


def test_dev_zero_is_one_line_exit_2(tmp_path: Path) -> None:
    status, errors, _ = replay(tmp_path, "--crspace", "/dev/zero")
    assert status == 2
    assert errors == [
        "CR-space file /dev/zero is over 8388608 bytes: no dump of the 1048576-byte region "
        "is that long"
    ]


def test_forced_format_is_used(tmp_path: Path) -> None:
    dump = tmp_path / "crash.mstdump"
    dump.write_text(GOOD_ID)
    status, errors, _ = replay(tmp_path, "--crspace", str(dump), "--format", "devlink-text")
    assert status == 2
    assert errors == [f"{dump}:1: not a region dump line: {GOOD_ID.strip()!r}"]


def test_a_good_mstregdump_passes_the_checks_and_reaches_the_boot(tmp_path: Path) -> None:
    """The control: the same run with a good dump gets as far as the (missing) QEMU."""
    dump = tmp_path / "crash.mstdump"
    dump.write_text(GOOD_ID + "0x00001000 0x12345678\n")
    status, errors, report = replay(tmp_path, "--crspace", str(dump))
    assert status == 2 and len(errors) == 1 and "no-such-qemu" in errors[0], errors
    assert report["inputs"] == {
        "crspace": str(dump),
        "crspace_format": "mstregdump",
        "health": "built-in",
        "health_format": "built-in",
    }


def test_report_html_is_written_when_the_run_fails_before_the_boot(tmp_path: Path) -> None:
    status, errors, _ = replay(tmp_path, "--crspace", "/dev/zero")
    assert status == 2
    dom = dump_dom(tmp_path / "run" / "report.html")
    words = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom.split("<body", 1)[1]))
    assert "ERROR rig replay the rig or its input failed (exit 2)" in words
    assert errors[0] in words
    for nothing in ("no reader got to read", "no fault was taken", "no comparison of CR-space"):
        assert nothing in words
