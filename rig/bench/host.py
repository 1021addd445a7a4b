"""Host-only round trips for `rig bench`: what a trapped MMIO access costs without a guest.

All use REGION_READ-sized messages (a 32-byte request, a 36-byte reply) over AF_UNIX streams:

* `rtt.c`: the floor, rig/bench_pingpong.c compiled with the system cc at run time: two C
  processes exchanging messages;
* `rtt.python`: the same exchange between two plain CPython processes, so the language's
  share and the model's share can be told apart;
* `rtt.model`: the same C program as a vfio-user client reading a trapped register (the
  semaphore, as the driver's reset does) from a `python -m cx3`: what QEMU, also C, sees;
* `rtt.host`: vfio_user.client doing the same, so both ends are Python;
* `rtt.model_one_cpu`: `rtt.model` with the client and a second model on one CPU, as a rig
  on the warped clock runs QEMU and its model (rig.cpus): a context switch a hop instead of
  a cross-CPU wake-up. Not measured where rig.cpus would not pin (one CPU, RIG_PIN=0).

Each figure is microseconds per round trip, one value per run.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cx3 import layout
from rig import cpus
from rig.devicemodel import DeviceModel
from rig.errors import RigError
from vfio_user.client import Client
from vfio_user.device import BAR0_REGION

PINGPONG_C = Path(__file__).with_name("pingpong.c")
REQUEST = 32  # vfio-user header (16) + struct region_rw (16)
REPLY = 36  # the same + 4 bytes of data
TRAPPED_REGISTER = layout.SEMAPHORE


def round_trips(runs: int, log_dir: Path, reads: int = 10000) -> dict[str, list[float]]:
    """Every host figure, `runs` values each: see the module's docstring. One run of each
    figure after the other (A B C D A B C D ...), so the i-th values of two figures saw the
    same load and their ratio is fair."""
    out: dict[str, list[float]] = {"rtt.c": [], "rtt.python": [], "rtt.model": [], "rtt.host": []}
    with tempfile.TemporaryDirectory(prefix="rig-bench-") as tmp, contextlib.ExitStack() as stack:
        exe = str(_compile(Path(tmp)))
        python = [sys.executable, "-c", f"{_PYTHON_PINGPONG}({2 * reads})"]
        device = stack.enter_context(DeviceModel(Path(tmp), log_dir, name="bench-cx3"))

        def model(sock: Path) -> list[str]:
            return [exe, "--vfio-user", str(sock), str(BAR0_REGION), hex(TRAPPED_REGISTER)]

        one_cpu: list[str] = []
        with cpus.claim() as cpu:
            if cpu is not None:
                pinned = DeviceModel(Path(tmp), log_dir, name="bench-cx3-pinned", cpu=cpu)
                stack.enter_context(pinned)
                one_cpu = [*cpus.on_cpu(cpu), *model(pinned.socket), str(reads)]
                out["rtt.model_one_cpu"] = []
        for _ in range(runs):
            out["rtt.c"].append(_timed_run([exe, str(2 * reads)], "C ping-pong"))
            out["rtt.python"].append(_timed_run(python, "Python ping-pong"))
            out["rtt.model"].append(_timed_run([*model(device.socket), str(reads)], "C client"))
            if one_cpu:
                out["rtt.model_one_cpu"].append(_timed_run(one_cpu, "C client on one CPU"))
            # The model serves one client at a time: this one only while the C ones are not.
            with _PythonClient(device.socket) as client:
                out["rtt.host"].append(client.timed(reads))
        return out


def _compile(tmp: Path) -> Path:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise RigError("no C compiler (cc) for the ping-pong baseline: apt-get install gcc")
    exe = tmp / "pingpong"
    res = subprocess.run(
        [cc, "-O2", "-o", str(exe), str(PINGPONG_C)], capture_output=True, text=True
    )
    if res.returncode != 0:
        raise RigError(f"cc {PINGPONG_C} failed: {res.stderr.strip()[-500:]}")
    return exe


_PYTHON_PINGPONG = "from rig.bench.host import _python_pingpong_child as f; f"


def _python_pingpong_child(round_trips: int) -> None:
    """Run in a fresh interpreter (a fork of the rig, with its threads, is no baseline)."""
    a, b = socket.socketpair()
    pid = os.fork()
    if pid == 0:
        a.close()
        reply = bytes(REPLY)
        while b.recv(REQUEST):
            b.sendall(reply)
        os._exit(0)
    b.close()
    request = bytes(REQUEST)
    t0 = time.perf_counter_ns()
    for _ in range(round_trips):
        a.sendall(request)
        got = 0
        while got < REPLY:
            got += len(a.recv(REPLY - got))
    elapsed = time.perf_counter_ns() - t0
    a.close()
    os.waitpid(pid, 0)
    print(round_trips, elapsed)


def _timed_run(cmd: list[str], what: str) -> float:
    """Run a ping-pong; it prints "<round trips> <ns>": µs per round trip."""
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if res.returncode != 0:
        raise RigError(f"{what} failed: {res.stderr.strip()[-500:]}")
    n, ns = (int(w) for w in res.stdout.split())
    return ns / n / 1000


class _PythonClient:
    """vfio_user.client reading the trapped register, warmed up once."""

    def __init__(self, path: Path) -> None:
        self._client = Client(path)

    def __enter__(self) -> _PythonClient:
        self._client.__enter__()
        self._client.version()
        for _ in range(200):  # warm up: first-use costs are not the steady state
            self._client.read32(BAR0_REGION, TRAPPED_REGISTER)
        return self

    def __exit__(self, *exc: object) -> None:
        self._client.close()

    def timed(self, reads: int) -> float:
        """µs per round trip over `reads` reads."""
        t0 = time.perf_counter_ns()
        for _ in range(reads):
            self._client.read32(BAR0_REGION, TRAPPED_REGISTER)
        return (time.perf_counter_ns() - t0) / reads / 1000
