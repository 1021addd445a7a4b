"""`cx3-qemu` (`python -m cx3.qemuwrap`) QEMU-ARGS...: a qemu-system-x86_64 that brings the
card along, for harnesses that build and run the QEMU command line themselves (LAVA's qemu
device type, tuxrun): put it first on their PATH as `qemu-system-x86_64`.

It starts `cx3-device --print-qemu-args --exit-with-client` with the guest's `-m`, waits for
"ready", then becomes the real QEMU ($CX3_QEMU) with the card's arguments appended, so the
harness talks to QEMU itself, as before. The card's sockets and log are in $CX3_DIR (default:
a new temporary directory, named on stderr): `cx3.sock`, `cx3.ctl` (faults and the crdump
truth, cx3.client.ControlClient) and `cx3-device.log`. The card stops when QEMU disconnects, or
when QEMU exits before it ever connected. A command line that starts no VM (`--version`,
`-L help`, `-device help`, ...) runs the real QEMU alone.

Why a wrapper and not the job's `extra_options`: LAVA renders a device dictionary's `extra`
list with Python's repr, so an option holding the card's single-quoted `-device` JSON turns
into YAML that does not parse, and LAVA splits the command string again like a shell, which
strips the JSON's double quotes; here no quote passes through LAVA at all.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

PR_SET_PDEATHSIG = 1
INFO_FLAGS = {"-h", "-help", "--help", "-version", "--version"}
DEFAULT_MEMORY = "128M"  # QEMU's own default for x86


def guest_memory(args: list[str]) -> str:
    """The guest RAM the command line asks for (its last -m), with a unit: a bare number is
    MiB to -m but bytes to the memory backend the card adds."""
    memory = DEFAULT_MEMORY
    for flag, value in itertools.pairwise(args):
        if flag in ("-m", "--m"):
            m = re.search(r"(?:^|,)(?:size=)?(\d+(?:\.\d+)?[KMGT]?)(?:,|$)", value, re.I)
            if m is None:
                raise ValueError(f"-m {value}: no size in it")
            memory = m.group(1) if not m.group(1).isdigit() else m.group(1) + "M"
    return memory


def starts_a_vm(args: list[str]) -> bool:
    return not any(a in INFO_FLAGS or a == "help" or a.endswith(",help") for a in args)


def _die_with_parent() -> None:
    # The parent becomes QEMU: if QEMU exits before it ever connects, the card must not stay.
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    real = os.environ.get("CX3_QEMU", "")
    if not real:
        print("cx3-qemu: set CX3_QEMU to the qemu-system-x86_64 to run (>= 10.1)", file=sys.stderr)
        return 2
    if not starts_a_vm(args):
        os.execv(real, [real, *args])
    try:
        memory = guest_memory(args)
    except ValueError as e:
        print(f"cx3-qemu: {e}", file=sys.stderr)
        return 2
    where = Path(os.environ.get("CX3_DIR") or tempfile.mkdtemp(prefix="cx3-"))
    where.mkdir(parents=True, exist_ok=True)
    log = where / "cx3-device.log"
    card = ["--socket", str(where / "cx3.sock"), "--control", str(where / "cx3.ctl")]
    standalone = ["--print-qemu-args", "--memory", memory, "--exit-with-client"]
    model = subprocess.Popen(
        [sys.executable, "-m", "cx3", *card, "--log", str(log), *standalone],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=_die_with_parent,
    )
    assert model.stdout is not None
    if model.stdout.readline() != "ready\n":
        print(f"cx3-qemu: the card did not start: {log}", file=sys.stderr)
        return 2
    attach = shlex.split(model.stdout.readline())
    print(f"cx3-qemu: the card's control socket is {where / 'cx3.ctl'}", file=sys.stderr)
    os.execv(real, [real, *args, *attach])


if __name__ == "__main__":
    sys.exit(main())
