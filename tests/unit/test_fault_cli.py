"""`rig fault KNOB`: subcommands generated from the device's knob table, run against a real
control server (no VM)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cx3.client import ControlClient
from cx3.device import Cx3Device
from cx3.server import ControlServer
from rig.cli import build_parser, main
from rig.instance import Instance
from tests.unit.vfio_loop import running_loop


class FakeInstance:
    def __init__(self, path: str) -> None:
        self.path = path

    def control(self) -> ControlClient:
        return ControlClient(self.path)


@pytest.fixture
def device(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cx3Device]:
    dev = Cx3Device()
    path = str(tmp_path / "control.sock")
    server = ControlServer(dev, path)

    def find(name: str) -> FakeInstance:
        return FakeInstance(path)

    monkeypatch.setattr(Instance, "find", find)
    with running_loop(server.register):
        yield dev
    server.close()


def test_knobs_are_subcommands_with_their_arguments() -> None:
    args = build_parser().parse_args(["fault", "closing-cmd", "--opcode", "0x13", "--status", "3"])
    assert (args.op.name, args.knob_opcode, args.knob_status, args.name) == (
        "closing_cmd",
        0x13,
        3,
        "default",
    )
    args = build_parser().parse_args(["fault", "--name", "a", "catas", "--words", "1", "0x2"])
    assert (args.op.name, args.knob_words, args.name) == ("catas", [1, 2], "a")
    assert build_parser().parse_args(["fault", "clear", "--name", "b"]).name == "b"
    for bad in (
        ["fault"],
        ["fault", "nope"],
        ["fault", "catas", "--opcode", "1"],
        ["fault", "advertise-health"],
    ):
        with pytest.raises(SystemExit):
            build_parser().parse_args(bad)


def test_fault_commands_reach_the_model(
    device: Cx3Device, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["fault", "catas", "--words", "0x0fffffff", "7"]) == 0
    assert device.read_bar0(0x1F000, 8) == bytes.fromhex("0fffffff00000007")
    assert "catas --words 0x0fffffff 0x00000007:" in capsys.readouterr().out
    assert main(["fault", "cmd-timeout", "--opcode", "0x31"]) == 0
    assert main(["fault", "closing-cmd", "--status", "3"]) == 0
    assert device.faults.describe() == {
        "cmd_timeout": {"opcode": 0x31},
        "closing_cmd": {"opcode": None, "status": 3},
    }
    assert main(["fault", "advertise-health", "--no-enabled"]) == 0
    assert device.firmware.health_buffer is False
    assert main(["fault", "clear"]) == 0
    assert device.faults.describe() == {"cmd_timeout": None, "closing_cmd": None}
    assert main(["fault", "catas"]) == 0  # the knob's default words
    assert device.read_bar0(0x1F000, 4) == bytes.fromhex("0fffffff")


def test_rig_link_pulls_and_plugs_the_cable(
    device: Cx3Device, capsys: pytest.CaptureFixture[str]
) -> None:
    assert device.firmware.cable.plugged
    assert main(["link", "down"]) == 0
    assert not device.firmware.cable.plugged
    assert "cable pulled" in capsys.readouterr().out
    assert main(["fault", "link", "--up"]) == 0  # the same knob, as `rig fault` shows it
    assert device.firmware.cable.plugged
    assert [e["cable"] for e in device.events.since(0) if e["kind"] == "link"] == [False, True]


def test_a_refused_fault_is_one_line_not_a_traceback(
    device: Cx3Device, capsys: pytest.CaptureFixture[str]
) -> None:
    for opcode in ("1", "0x31"):  # not a closing command: the model refuses, exit 2
        assert main(["fault", "closing-cmd", "--opcode", opcode]) == 2
        err = capsys.readouterr().err
        assert err.startswith("rig: error: the device model refused: closing_cmd:"), err
        assert "is not a closing command" in err and err.count("\n") == 1, err
    assert device.faults.describe()["closing_cmd"] is None
