"""The control socket: round trips through a real unix socket and a selectors loop."""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from cx3 import layout
from cx3.client import ControlClient, ControlError
from cx3.device import Cx3Device
from cx3.server import ControlServer
from cx3.wire import MAX_LINE
from tests.unit.cx3_guest import region_write
from tests.unit.vfio_loop import running_loop


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Cx3Device, str]]:
    dev = Cx3Device()
    path = str(tmp_path / "control.sock")
    server = ControlServer(dev, path)
    with running_loop(server.register):
        yield dev, path
    server.close()
    assert not Path(path).exists()


def raw_request(path: str, payload: bytes) -> dict[str, object]:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        s.connect(path)
        s.sendall(payload)
        reply: dict[str, object] = json.loads(s.makefile("rb").readline())
        return reply


def test_ping_and_state(served: tuple[Cx3Device, str]) -> None:
    _, path = served
    with ControlClient(path) as client:
        client.ping()
        state = client.state()
    assert state["fw_running"] is False and state["hcr_busy"] is False
    assert state["faults"] == {"cmd_timeout": None, "closing_cmd": None}


def test_fault_knobs_reach_bar0(served: tuple[Cx3Device, str]) -> None:
    dev, path = served
    with ControlClient(path) as client:
        client.fault("catas", words=(0x0FFFFFFF, 1, 2))
        assert client.read_bar0(0x1F000, 12) == bytes.fromhex("0fffffff0000000100000002")
        client.set_health(bytes(range(64)))
        assert client.read_bar0(0x1F100, 64) == bytes(range(64))
        client.load_crspace(b"\x42" * layout.SIZE)
        assert client.read_bar0(0x40000, 4) == b"\x42" * 4
        assert client.read_bar0(0x1F000, 4) == bytes.fromhex("0fffffff")  # live register kept
        client.fault("catas")
        assert client.read_bar0(0x1F000, 4) == bytes.fromhex("0fffffff")
    assert dev.read_bar0(0x1F100, 64) == bytes(range(64))


def test_command_fault_switches(served: tuple[Cx3Device, str]) -> None:
    dev, path = served
    with ControlClient(path) as client:
        client.fault("cmd_timeout", opcode=0x031)
        client.fault("closing_cmd", opcode=0x014, status=3)
        assert client.state()["faults"] == {
            "cmd_timeout": {"opcode": 0x031},
            "closing_cmd": {"opcode": 0x014, "status": 3},
        }
        client.fault("clear")
        assert dev.faults.armed_timeout is None and dev.faults.armed_closing is None
        client.fault("cmd_timeout")
        assert client.state()["faults"]["cmd_timeout"] == {"opcode": None}


def test_health_buffer_knob(served: tuple[Cx3Device, str]) -> None:
    dev, path = served
    with ControlClient(path) as client:
        client.fault("advertise_health", enabled=False)
        assert client.state()["health_buffer"] is False
        with pytest.raises(ControlError, match="'enabled' must be true or false"):
            client.call("advertise_health", enabled=0)
        client.fault("advertise_health", enabled=True)
    assert dev.firmware.health_buffer is True


def test_crdump_records_and_events(served: tuple[Cx3Device, str]) -> None:
    dev, path = served
    dev.faults.catas()
    region_write(dev, 0, 0x1F140, b"\0\0\0\1")  # the driver's crdump begins
    region_write(dev, 0, 0x1F140, b"\0\0\0\0")
    with ControlClient(path) as client:
        assert [c.index for c in client.crdumps()] == [0]
        dump = client.crdump(0)
        assert dump.image == dev.crdumps.get(0).image and len(dump.image) == layout.SIZE
        assert dump.image[0x1F140:0x1F144] == b"\0\0\0\1"
        assert dump.health == bytes(64)
        page = client.events()
        kinds = [e["kind"] for e in page.events]
        assert kinds == ["fault", "crdump", "crdump_end"]  # the driver wrote 1, then 0
        assert client.events(since=page.next).events == []
        assert [e["kind"] for e in client.events(since=2).events] == ["crdump_end"]
        with pytest.raises(ControlError, match="no crdump 5"):
            client.crdump(5)


@pytest.mark.parametrize(
    "op,args,message",
    [
        ("nope", {}, "unknown op 'nope'"),
        ("read_bar0", {"offset": 0}, "missing 'length'"),
        ("read_bar0", {"offset": True, "length": 4}, "'offset' must be an integer"),
        ("read_bar0", {"offset": 0xFFFFC, "length": 8}, "outside"),
        ("set_health", {"data": "!!!"}, "not valid base64"),
        ("set_health", {"data": "AAAA"}, "64 bytes"),
        ("catas", {"words": "x"}, "list of integers"),
        ("catas", {"words": [1 << 32]}, "32-bit"),
        ("catas", {"words": []}, "1..16 words"),
        ("closing_cmd", {"opcode": 0x031}, "not a closing command"),
        ("cmd_timeout", {"opcode": 0x1000}, "0..0xfff"),
        ("crdump", {"index": "0"}, "must be an integer"),
    ],
)
def test_bad_requests_get_clear_errors(
    served: tuple[Cx3Device, str], op: str, args: dict[str, object], message: str
) -> None:
    _, path = served
    with ControlClient(path) as client:
        with pytest.raises(ControlError, match=message):
            client.call(op, **args)
        client.ping()  # the connection survives


@pytest.mark.parametrize(
    "payload,message",
    [
        (b"{not json\n", "Expecting"),
        (b"[1, 2]\n", "JSON object"),
        (b"\xff\xfe\n", "can't decode"),
        (b'{"op": 5}\n', "unknown op 5"),
    ],
)
def test_malformed_lines(served: tuple[Cx3Device, str], payload: bytes, message: str) -> None:
    _, path = served
    reply = raw_request(path, payload)
    assert reply["ok"] is False and message in str(reply["error"])


def test_overlong_request_is_refused_and_server_lives(served: tuple[Cx3Device, str]) -> None:
    _, path = served
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(path)
        with contextlib.suppress(BrokenPipeError):  # the server may hang up before we finish
            s.sendall(b"x" * (MAX_LINE + (1 << 16)))
        reply = json.loads(s.makefile("rb").readline())
    assert reply["ok"] is False and "longer than" in reply["error"]
    with ControlClient(path) as client:
        client.ping()


def test_client_vanishing_mid_reply(served: tuple[Cx3Device, str]) -> None:
    dev, path = served
    region_write(dev, 0, 0x1F140, b"\0\0\0\1")
    for _ in range(3):
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(path)
            s.sendall(b'{"op": "crdump", "index": 0}\n')  # ~1.4 MB reply, never read
    with ControlClient(path) as client:
        assert client.crdump(0).image == dev.crdumps.get(0).image


def test_two_clients_interleaved(served: tuple[Cx3Device, str]) -> None:
    _, path = served
    with ControlClient(path) as a, ControlClient(path) as b:
        a.fault("catas", words=(7,))
        assert b.read_bar0(0x1F000, 4) == b"\0\0\0\7"
        b.ping()
        a.ping()


def test_stale_socket_is_replaced(tmp_path: Path) -> None:
    path = str(tmp_path / "c.sock")
    old = socket.socket(socket.AF_UNIX)
    old.bind(path)
    old.close()  # leaves the socket file behind, like a crashed run
    server = ControlServer(Cx3Device(), path)
    with running_loop(server.register), ControlClient(path) as client:
        client.ping()
    server.close()


def test_client_refuses_wrong_image_size_locally(served: tuple[Cx3Device, str]) -> None:
    _, path = served
    with ControlClient(path) as client, pytest.raises(ControlError, match="1048576"):
        client.load_crspace(b"\0" * 10)


def test_client_refuses_unknown_knobs_and_arguments_locally(served: tuple[Cx3Device, str]) -> None:
    _, path = served
    with ControlClient(path) as client:
        with pytest.raises(ControlError, match="no fault knob 'ping'"):
            client.fault("ping")
        with pytest.raises(TypeError, match="'opcod'"):
            client.fault("cmd_timeout", opcod=1)
        client.ping()


def test_a_call_interrupted_before_its_reply_leaves_no_stale_reply(
    served: tuple[Cx3Device, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A signal's exception (the rig turns SIGINT into one) between a request and its reply:
    the next call must not read that reply as its own (a replay's timeline read the fault's
    reply and died on KeyError 'events')."""
    _, path = served
    with ControlClient(path) as client:
        reader = client._reader
        interrupted: list[bool] = []

        class Interrupting:
            def readline(self, size: int) -> bytes:
                if not interrupted:
                    interrupted.append(True)
                    raise KeyboardInterrupt
                return reader.readline(size)

            def close(self) -> None:
                reader.close()

        monkeypatch.setattr(client, "_reader", Interrupting())
        with pytest.raises(KeyboardInterrupt):
            client.ping()
        with pytest.raises(ConnectionError, match="out of step: 'ping' ended before its reply"):
            client.events()
