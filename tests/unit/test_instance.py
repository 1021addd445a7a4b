"""`rig up`'s instance file against real processes: a stale file or a reused pid never gets
another process signalled, a dead rig's leftovers are removed, the file is private."""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from rig.cli import main
from rig.errors import RigError
from rig.instance import Instance
from rig.process import Identity, owned_tempdir


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("RIG_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path / "cache"


@pytest.fixture
def sleepers() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs = [subprocess.Popen(["sleep", "60"]) for _ in range(2)]
    yield procs
    for p in procs:
        p.kill()
        p.wait()


def ident(proc: subprocess.Popen[bytes]) -> tuple[int, int]:
    i = Identity.of(proc.pid)
    assert i is not None
    return i.pid, i.start


def instance(owner: tuple[int, int], **kw: object) -> Instance:
    fields: dict[str, object] = {
        "name": "t",
        "owner": owner,
        "ssh_port": 1,
        "client_key": "k",
        "host_key": "h",
        "control_socket": "/nonexistent/cx3.ctl",
        "dev_handle": "pci/0000:00:03.0",
        "log_dir": "/tmp",
    }
    inst = Instance(**{**fields, **kw})  # type: ignore[arg-type]
    inst._write()
    return inst


def dead_process() -> tuple[int, int]:
    proc = subprocess.Popen(["true"])
    me = Identity.of(proc.pid)
    assert me is not None
    proc.wait()
    return me.pid, me.start


def test_the_file_is_private_and_round_trips(cache: Path) -> None:
    inst = instance((1, 2), processes={"QEMU": (3, 4)}, tempdirs=("/tmp/x",))
    path = Instance.path("t")
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700
    assert Instance.load("t") == inst
    assert Instance.load("other") is None


def test_a_dead_rig_up_leaves_nothing_behind_and_no_stranger_is_signalled(
    sleepers: list[subprocess.Popen[bytes]], capsys: pytest.CaptureFixture[str]
) -> None:
    qemu, stranger = sleepers
    owner = dead_process()
    ours = owned_tempdir("rig-run-")
    (ours / "owner").write_text(f"{owner[0]} {owner[1]}\n")
    not_ours = owned_tempdir("rig-vm-")  # recorded, but another process made it
    pid, start = ident(stranger)
    instance(
        owner,
        processes={"QEMU": ident(qemu), "device model": (pid, start + 1)},  # pid reused
        tempdirs=(str(ours), str(not_ours)),
    )
    with pytest.raises(RigError) as caught:
        Instance.find("t")
    assert str(caught.value) == (
        f"rig 't' failed: its `rig up` process {owner[0]} died; `rig down --name t`"
    )
    assert qemu.wait(5) == -signal.SIGTERM  # the rig's own leftover QEMU: ended
    assert stranger.poll() is None  # same pid, another process: untouched
    assert not ours.exists() and not_ours.is_dir()
    with pytest.raises(RigError, match="failed: its `rig up` process"):
        Instance.find("t")  # said again until `rig down`
    assert main(["down", "--name", "t"]) == 0
    assert "rig 't' was down (it failed: its `rig up` process" in capsys.readouterr().out
    assert Instance.load("t") is None


def test_a_live_rig_with_a_dead_model_is_broken(sleepers: list[subprocess.Popen[bytes]]) -> None:
    owner, model = sleepers
    instance(ident(owner), processes={"device model": ident(model)})
    assert Instance.find("t").owner == ident(owner)
    model.kill()
    model.wait()
    with pytest.raises(RigError, match=r"its device model \(pid \d+\) is gone"):
        Instance.find("t")
    with pytest.raises(RigError, match=r"does not answer on /nonexistent/cx3\.ctl"):
        Instance.load("t").control()  # type: ignore[union-attr]


def test_rig_down_signals_that_very_rig_up_and_waits_for_it() -> None:
    owner = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import signal,sys,time; signal.signal(signal.SIGTERM, lambda *a: sys.exit(0));"
            "print('up', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
    )
    assert owner.stdout is not None and owner.stdout.readline() == b"up\n"
    instance(ident(owner))
    assert main(["down", "--name", "t"]) == 0
    assert owner.wait(1) == 0  # it got SIGTERM and had exited when `rig down` returned
    owner.stdout.close()


def test_a_failure_recorded_by_rig_up_is_what_the_next_command_says(
    sleepers: list[subprocess.Popen[bytes]], capsys: pytest.CaptureFixture[str]
) -> None:
    inst = instance(ident(sleepers[0]))
    inst.record_failure("device model exited unexpectedly (signal SIGKILL)")
    assert main(["devlink", "--name", "t", "region", "show"]) == 2
    assert capsys.readouterr().err == (
        "rig: error: rig 't' failed: device model exited unexpectedly (signal SIGKILL); "
        "`rig down --name t`\n"
    )
