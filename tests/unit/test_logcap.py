"""QEMU's logs are capped: the head is kept, the rest counted, and the file says so."""

from __future__ import annotations

import subprocess
from pathlib import Path

from rig.vm.logcap import CappedLog, PipeLog


def test_a_capped_log_keeps_its_head_and_says_what_it_dropped(tmp_path: Path) -> None:
    log = CappedLog(tmp_path / "x.log", 100, "x.log")
    assert log.write(b"a" * 60) == b"a" * 60
    assert log.write(b"b" * 60) == b"b" * 40
    assert log.write(b"c" * 1000) == b""
    log.close()
    log.close()  # idempotent
    text = (tmp_path / "x.log").read_text()
    assert text.startswith("a" * 60 + "b" * 40 + "\n[rig: x.log capped at 100 bytes;")
    assert "later output is dropped" in text
    assert text.endswith("1020 bytes dropped]\n")
    assert log.write(b"late") == b""  # after close: nothing, no error


def test_a_child_flooding_its_pipe_is_drained_and_capped(tmp_path: Path) -> None:
    """A QEMU whose device model died writes stderr without end: it must never block on the
    pipe, and the file must stay at the cap."""
    pipe = PipeLog(tmp_path / "stderr.log", 1 << 16, "stderr.log")
    proc = subprocess.Popen(
        ["head", "-c", str(20 << 20), "/dev/zero"], stdout=pipe.write_fd, stderr=subprocess.STDOUT
    )
    pipe.started()
    assert proc.wait(30) == 0  # 20 MiB through a 64 KiB cap: drained, never blocked
    pipe.close()
    size = (tmp_path / "stderr.log").stat().st_size
    assert (1 << 16) < size < (1 << 16) + 200
    assert f"{(20 << 20) - (1 << 16)} bytes dropped" in (tmp_path / "stderr.log").read_text(
        errors="replace"
    )
