"""The rig under chaos, end to end: real replays and `rig up`s (QEMU, kernel, driver, model)
hit at each phase the way CI and people hit them.

* SIGTERM, SIGHUP and SIGINT while the replay boots, takes the fault, and reads the snapshots;
* the device model killed, and QEMU stopped then killed, mid-fault;
* `rig up` killed outright, hung up on, and left with a dead model.

Each asserts the exit status, the one line that says why, report.json kept in the run
directory and saying the same, and that nothing is left: no process naming the run's private
TMPDIR (QEMU's and the model's command lines do), nothing in that TMPDIR. The figures (kill
to exit, CPU while waiting, leftovers) go to the JUnit properties and, with -s, to stdout.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from rig.instance import Instance
from rig.rig import resolve_boot
from tests.chaos.rigproc import RigProcess

pytestmark = pytest.mark.chaos

PHASES = {
    "boot": "",  # the rig's line for its boot mode: BOOT_LINES
    "fault": "injecting fault",
    "reads": "reading the snapshots",
}
BOOT_LINES = {"fresh": "booting", "saved": "resuming a saved"}
EXIT_WITHIN = 2.0  # s from a kill to the rig's exit
FIGURES: dict[str, object] = {}  # this test's figures, recorded by the `record` fixture


@pytest.fixture
def record(record_testsuite_property: Callable[[str, object], None]) -> Iterator[None]:
    FIGURES.clear()
    yield
    for name, value in FIGURES.items():
        record_testsuite_property(name, value)
        print(f"{name}: {value}")


@pytest.fixture
def procs() -> Iterator[list[RigProcess]]:
    started: list[RigProcess] = []
    yield started
    for p in started:
        p.kill()  # a failed test must not leave its rig running


def replay(tmp_path: Path, procs: list[RigProcess]) -> tuple[RigProcess, Path]:
    out = tmp_path / "run"
    p = RigProcess(tmp_path, "replay", "--out", str(out))
    procs.append(p)
    return p, out


def report(out: Path) -> dict[str, object]:
    doc: dict[str, object] = json.loads((out / "report.json").read_text())
    return doc


def assert_nothing_left(p: RigProcess, what: str) -> None:
    left = p.leftovers()
    FIGURES[f"{what}: leftovers"] = len(left)
    assert left == [], f"{what}: left behind: {left}"


@pytest.mark.parametrize("phase", PHASES)
@pytest.mark.parametrize(
    "signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT], ids=lambda s: signal.Signals(s).name
)
def test_a_signal_at_each_phase_tears_the_replay_down(
    tmp_path: Path, procs: list[RigProcess], record: None, signum: int, phase: str
) -> None:
    p, out = replay(tmp_path, procs)
    # The rig's boot mode: --rig-boot (exported as $RIG_BOOT), else the default.
    text = PHASES[phase] or BOOT_LINES[resolve_boot(None)]
    step = p.await_line(text).removeprefix("rig: ").removesuffix(" ...")
    children = p.children()  # QEMU and the model run (at boot: QEMU is booting)
    t0 = time.monotonic()
    p.send(signum)
    status = p.finish()
    took = time.monotonic() - t0
    name = signal.Signals(signum).name
    verb = "interrupted" if signum == signal.SIGINT else "terminated"
    FIGURES[f"{name} at {phase}: s to exit"] = round(took, 2)
    assert status == 128 + signum, p.output()
    assert p.error_lines() == [f"rig: {verb} by {name} (report: {out / 'report.json'})"], p.output()
    doc = report(out)
    assert doc["exit_status"] == 128 + signum
    assert doc["errors"] == [f"{verb} by {name} during: {step}"]
    assert (out / "console.log").is_file()
    for what, child in children.items():
        assert not child.alive(), f"{what} outlived the rig"
    assert_nothing_left(p, f"{name} at {phase}")


def test_a_killed_device_model_ends_the_replay_at_once(
    tmp_path: Path, procs: list[RigProcess], record: None
) -> None:
    p, out = replay(tmp_path, procs)
    p.await_line(PHASES["fault"])
    model = p.children()["device model"]
    t0 = time.monotonic()
    model.signal(signal.SIGKILL)
    status = p.finish()
    took = time.monotonic() - t0
    FIGURES["model killed mid-fault: s to exit"] = round(took, 2)
    assert status == 2, p.output()
    line = f"rig: error: device model exited unexpectedly (signal SIGKILL) (full log: {out}"
    assert [ln for ln in p.error_lines() if ln.startswith(line)], p.output()
    assert took < EXIT_WITHIN, took
    doc = report(out)
    assert doc["exit_status"] == 2
    assert str(doc["errors"][0]).startswith("device model exited unexpectedly (signal SIGKILL)")  # type: ignore[index]
    assert_nothing_left(p, "model killed")


def test_a_stopped_then_killed_qemu_costs_no_cpu_and_ends_the_replay_at_once(
    tmp_path: Path, procs: list[RigProcess], record: None
) -> None:
    """The issue: the rig spun at 100% CPU for 40-120 s after QEMU died."""
    p, out = replay(tmp_path, procs)
    p.await_line(PHASES["fault"])
    qemu = p.children()["QEMU"]
    qemu.signal(signal.SIGSTOP)  # the rig now waits for the driver's snapshots: in vain
    cpu0, t0 = p.cpu(), time.monotonic()
    time.sleep(3.0)  # the window the CPU is measured over
    share = (p.cpu() - cpu0) / (time.monotonic() - t0)
    FIGURES["rig CPU while QEMU is stopped (share of one core)"] = round(share, 3)
    assert share < 0.05, share
    t0 = time.monotonic()
    qemu.signal(signal.SIGKILL)
    status = p.finish()
    took = time.monotonic() - t0
    FIGURES["QEMU killed mid-fault: s to exit"] = round(took, 2)
    assert status == 2, p.output()
    assert [ln for ln in p.error_lines() if "QEMU exited unexpectedly (signal SIGKILL" in ln], (
        p.output()
    )
    assert took < EXIT_WITHIN, took
    assert "QEMU exited unexpectedly" in str(report(out)["errors"])
    assert_nothing_left(p, "QEMU killed")


def up(tmp_path: Path, procs: list[RigProcess], name: str) -> tuple[RigProcess, Path]:
    logs = tmp_path / "logs"
    p = RigProcess(tmp_path, "up", "--name", name, "--logs", str(logs))
    procs.append(p)
    p.await_line(f"rig {name!r} is up")
    return p, logs


def rig(tmp_path: Path, *args: str) -> RigProcess:
    p = RigProcess(tmp_path, *args)
    p.finish(60)
    return p


@pytest.fixture
def name() -> Iterator[str]:
    name = f"chaos-{os.getpid()}"
    yield name
    inst = Instance.load(name)
    if inst is not None and not inst.owner_identity.alive():
        inst.clean()


def test_rig_up_killed_outright_takes_its_children_and_rig_down_clears_the_rest(
    tmp_path: Path, procs: list[RigProcess], record: None, name: str
) -> None:
    p, _ = up(tmp_path, procs, name)
    children = p.children()
    p.send(signal.SIGKILL)
    p.finish()
    for what, child in children.items():
        assert child.wait_gone(5), f"{what} outlived `rig up` killed outright"
    assert len(list(p.tempdir.iterdir())) == 2  # its sockets' directories: nobody ran teardown
    down = rig(tmp_path, "down", "--name", name)
    assert down.proc.returncode == 0, down.output()
    assert down.output().startswith(
        f"rig {name!r} was down (its `rig up` process {p.proc.pid} died); removed: "
    ), down.output()
    assert Instance.load(name) is None
    assert_nothing_left(p, "rig up SIGKILL")


def test_rig_up_takes_sighup_like_ctrl_c(
    tmp_path: Path, procs: list[RigProcess], record: None, name: str
) -> None:
    p, _ = up(tmp_path, procs, name)
    children = p.children()
    p.send(signal.SIGHUP)
    assert p.finish() == 0, p.output()
    assert f"rig: stopping rig {name!r} (terminated by SIGHUP)" in p.output()
    assert not any(c.alive() for c in children.values())
    assert Instance.load(name) is None
    assert_nothing_left(p, "rig up SIGHUP")


def test_a_dead_model_under_rig_up_is_named_by_the_next_command(
    tmp_path: Path, procs: list[RigProcess], record: None, name: str
) -> None:
    """The issue: QEMU's stderr grew 250 MB in 12 s, `rig devlink` still exited 0 and the
    next `rig fault` ended in a traceback."""
    p, logs = up(tmp_path, procs, name)
    p.children()["device model"].signal(signal.SIGKILL)
    t0 = time.monotonic()
    assert p.finish() == 2, p.output()
    FIGURES["rig up, model killed: s to exit"] = round(time.monotonic() - t0, 2)
    assert [ln for ln in p.error_lines() if "device model exited unexpectedly" in ln]
    said = f"rig: error: rig {name!r} failed: device model exited unexpectedly (signal SIGKILL)"
    for args in (("devlink", "--name", name, "dev", "show"), ("fault", "--name", name, "catas")):
        after = rig(tmp_path, *args)
        assert after.proc.returncode == 2, after.output()
        lines = [ln for ln in after.lines if ln]
        assert len(lines) == 1 and lines[0].startswith(said), after.output()
    size = (logs / "qemu-stderr.log").stat().st_size
    FIGURES["rig up, model killed: qemu-stderr.log bytes"] = size
    assert size < 1 << 20
    assert rig(tmp_path, "down", "--name", name).proc.returncode == 0
    assert_nothing_left(p, "rig up model killed")
