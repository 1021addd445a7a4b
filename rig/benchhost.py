"""Host-only round trips for `rig bench`: what a trapped MMIO access costs without a guest.

* `c_pingpong`: the floor, rig/bench_pingpong.c compiled with the system cc: two processes
  exchanging REGION_READ-sized messages over an AF_UNIX socketpair;
* `python_pingpong`: the same exchange with two CPython processes and nothing else, so the
  language's share and the model's share of the device round trip can be told apart;
* `device_round_trips`: vfio_user.client reading a trapped register (the semaphore, as the
  driver's reset does) from a `python -m cx3` process, with no QEMU involved.

Each returns microseconds per round trip, one value per run.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cx3 import crspace
from vfio_user.client import Client
from vfio_user.device import BAR0_REGION

from .deviceproc import DeviceProcess
from .errors import RigError

PINGPONG_C = Path(__file__).with_name("bench_pingpong.c")
REQUEST = 32  # vfio-user header (16) + struct region_rw (16)
REPLY = 36  # the same + 4 bytes of data
TRAPPED_REGISTER = crspace.SEMAPHORE


def c_pingpong(runs: int, round_trips: int = 20000) -> list[float]:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise RigError("no C compiler (cc) for the ping-pong baseline: apt-get install gcc")
    with tempfile.TemporaryDirectory(prefix="rig-bench-") as tmp:
        exe = Path(tmp) / "pingpong"
        res = subprocess.run([cc, "-O2", "-o", str(exe), str(PINGPONG_C)],
                             capture_output=True, text=True)
        if res.returncode != 0:
            raise RigError(f"cc {PINGPONG_C} failed: {res.stderr.strip()[-500:]}")
        return _timed_runs([str(exe), str(round_trips)], runs, "ping-pong")


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


def python_pingpong(runs: int, round_trips: int = 20000) -> list[float]:
    code = f"from rig.benchhost import _python_pingpong_child as f; f({round_trips})"
    return _timed_runs([sys.executable, "-c", code], runs, "python ping-pong")


def _timed_runs(cmd: list[str], runs: int, what: str) -> list[float]:
    """Run a ping-pong `runs` times; it prints "<round trips> <ns>": µs per round trip."""
    out = []
    for _ in range(runs):
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if res.returncode != 0:
            raise RigError(f"{what} failed: {res.stderr.strip()[-500:]}")
        n, ns = (int(w) for w in res.stdout.split())
        out.append(ns / n / 1000)
    return out


def device_round_trips(runs: int, log_dir: Path, reads: int = 3000) -> list[float]:
    with tempfile.TemporaryDirectory(prefix="rig-bench-") as tmp, \
            DeviceProcess(Path(tmp), log_dir, name="bench-cx3") as device, \
            Client(device.socket) as client:
        client.version()
        for _ in range(200):  # warm up: first-use costs are not the steady state
            client.read32(BAR0_REGION, TRAPPED_REGISTER)
        out = []
        for _ in range(runs):
            t0 = time.perf_counter_ns()
            for _ in range(reads):
                client.read32(BAR0_REGION, TRAPPED_REGISTER)
            out.append((time.perf_counter_ns() - t0) / reads / 1000)
        return out
