"""QMP to one QEMU, with every command, reply and event written to the VM's qmp.log.

Uses qemu.qmp's synchronous shim; like it, a Monitor must be used from the thread that
made it (the shim runs an asyncio loop per thread). A signal (rig.signals) is held while that
loop runs: raised inside it, it broke the client half-way ("QMPClient is currently
connecting"), so the teardown's `quit` failed too.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qemu.qmp import QMPError
from qemu.qmp.legacy import QEMUMonitorProtocol

from rig import signals
from rig.errors import MachineError


class Monitor:
    def __init__(self, sock: socket.socket, log_path: Path) -> None:
        self.log_path = log_path
        self._log = log_path.open("w", encoding="utf-8")
        self._qmp = QEMUMonitorProtocol(sock)
        self._open = False
        self._events: list[dict[str, Any]] = []  # read with a command's reply, not yet awaited

    def _write(self, direction: str, message: object) -> None:
        self._log.write(
            f"{time.strftime('%H:%M:%S')} {direction} {json.dumps(message, default=str)}\n"
        )
        self._log.flush()

    def negotiate(self, timeout: float) -> dict[str, Any]:
        """Read QEMU's greeting and leave capabilities negotiation mode."""
        self._qmp.settimeout(timeout)
        try:
            with signals.deferred():
                greeting = self._qmp.connect(negotiate=True)
        except (TimeoutError, QMPError, OSError) as e:
            raise MachineError(f"QMP handshake failed: {e}", self.log_path) from e
        self._open = True
        self._write("<<<", greeting)
        return greeting or {}

    def settimeout(self, timeout: float) -> None:
        """How long each command waits for its reply from now on."""
        self._qmp.settimeout(timeout)

    def _log_events(self) -> None:
        for event in self._qmp.get_events(wait=False):
            self._write("<<< event", event)
            self._events.append(event)
        del self._events[:-64]  # only recent ones can be awaited

    def wait_event(
        self, name: str, match: Callable[[dict[str, Any]], bool], timeout: float
    ) -> dict[str, Any]:
        """The first event `name` whose data `match` accepts (also one that came with an
        earlier reply); MachineError after `timeout` s or if QEMU closes the connection."""
        deadline = time.monotonic() + timeout
        while True:
            for i, event in enumerate(self._events):
                if event.get("event") == name and match(event.get("data", {})):
                    del self._events[: i + 1]
                    return event
            self._events.clear()
            remaining = deadline - time.monotonic()
            try:
                if remaining <= 0:
                    raise TimeoutError
                with signals.deferred():
                    pulled = self._qmp.pull_event(wait=remaining)
            except (TimeoutError, QMPError, OSError, EOFError) as e:
                raise MachineError(
                    f"QMP: no {name} event within {timeout:.0f} s ({type(e).__name__})",
                    self.log_path,
                ) from e
            if pulled is not None:
                self._write("<<< event", pulled)
                self._events.append(pulled)

    def command(self, name: str, **arguments: object) -> Any:
        """Execute a command; its "return" value. MachineError on an error reply."""
        request: dict[str, object] = {"execute": name}
        if arguments:
            request["arguments"] = arguments
        self._write(">>>", request)
        try:
            with signals.deferred():
                reply = self._qmp.cmd_obj(request)
        except (TimeoutError, QMPError, OSError, EOFError) as e:
            self._write("!!!", f"{type(e).__name__}: {e}")
            raise MachineError(f"QMP {name} failed: {type(e).__name__}: {e}", self.log_path) from e
        self._write("<<<", reply)
        self._log_events()
        if "error" in reply:
            raise MachineError(
                f"QMP {name}: {reply['error'].get('desc', reply['error'])}", self.log_path
            )
        return reply.get("return")

    def human(self, command_line: str) -> str:
        """An HMP command through QMP (for what QMP has no command for, e.g. info usernet)."""
        return str(self.command("human-monitor-command", **{"command-line": command_line}))

    def close(self) -> None:
        if self._open:
            self._open = False
            for step in (self._log_events, self._qmp.close):
                try:
                    with signals.deferred():
                        step()
                except EOFError:
                    self._write("---", "connection closed by QEMU")
                    break
                except (TimeoutError, QMPError, OSError) as e:
                    self._write("!!!", f"close: {type(e).__name__}: {e}")
                    break
        self._log.close()
