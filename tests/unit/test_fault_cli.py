"""`rig fault KNOB`: subcommands generated from the device's knob table, run against a real
control server (no VM)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cx3.client import ControlClient, ControlError
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
    for opcode in ("1", "0x31"):  # not a closing command: refused by the CLI, exit 2
        assert main(["fault", "closing-cmd", "--opcode", opcode]) == 2
        err = capsys.readouterr().err
        assert err.startswith("rig: error: rig fault closing-cmd --opcode:"), err
        assert "is not a closing command" in err and err.count("\n") == 1, err
    assert device.faults.describe()["closing_cmd"] is None
    # The model holds the same rule (cx3/ops.py): a client that skips the CLI is refused too.
    with (
        Instance.find("default").control() as ctl,
        pytest.raises(ControlError, match="not a closing command"),
    ):
        ctl.fault("closing_cmd", opcode=0x31)


@pytest.mark.parametrize(
    "argv,message",
    [
        (["fault", "catas", "--words", "zz"], "argument --words: not an integer: 'zz'"),
        (["fault", "catas", "--words", "0x1ffffffff"], "32-bit unsigned"),
        (["fault", "catas", "--words", "-1"], "32-bit unsigned"),
        (["fault", "catas", "--words", *["1"] * 17], "1..16 words, got 17"),
        (["fault", "closing-cmd", "--opcode", "1"], "UNKNOWN_0x001 is not a closing command"),
        (["fault", "closing-cmd", "--status", "256"], "status must be 1..255"),
        (["fault", "cmd-timeout", "--opcode", "0x99999"], "opcode must be 0..0xfff"),
        (["fault", "--name", "../x", "clear"], "argument --name: bad rig name '../x'"),
        (["run", "--memory", "0", "--", "true"], "argument --memory: must be > 0"),
        (["run", "--timeout", "nan", "--", "true"], "argument --timeout: must be a number"),
        (["traffic", "--count", "-1"], "argument --count: must be >= 0"),
    ],
)
def test_bad_values_are_one_line_and_exit_2_before_any_rig_is_looked_for(
    argv: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_rig(name: str) -> None:
        raise AssertionError("a rig was looked for")

    monkeypatch.setattr(Instance, "find", no_rig)
    try:
        status = main(argv)
    except SystemExit as e:  # argparse's own exit
        status = int(e.code or 0)
    err = capsys.readouterr().err
    assert status == 2, err
    assert err.startswith("rig: error: ") and err.count("\n") == 1, err
    assert message in err, err


def test_an_output_directory_that_cannot_be_one_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = tmp_path / "file"
    file.write_text("")
    for out, why in ((file, "exists and is not a directory"), (file / "x", "cannot make it")):
        assert main(["replay", "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err == f"rig: error: --out {out}: {why}" + err[err.index(why) + len(why) :], err
        assert err.count("\n") == 1, err
