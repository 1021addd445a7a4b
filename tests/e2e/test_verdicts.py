"""What `rig run` says when the guest is lost, against the real QEMU and kernel: a panic, an
oops, a hang and a lost SSH connection are four messages, each naming the console log, exit 2.
And the guest is fenced in: it reaches none of the host's loopback services, and only this
rig's own key opens it."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rig.provision.sshkeys import ensure_client_key
from rig.rig import Rig
from rig.vm.ssh import GuestSsh, SshIdentity, SshRefused

pytestmark = pytest.mark.e2e


def rig_run(tmp_path: Path, *args: str) -> tuple[int, str, float]:
    """`rig run --keep-logs DIR ARGS`: its status, its stderr's error line, its duration."""
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "rig", "run", "--keep-logs", str(tmp_path), *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    errors = [line for line in proc.stderr.splitlines() if line.startswith("rig: error:")]
    assert len(errors) == 1, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.returncode, errors[0], time.monotonic() - t0


def names_console(line: str, tmp_path: Path) -> bool:
    return line.endswith(f"(full log: {tmp_path / 'console.log'})")


def test_a_panic_is_named(tmp_path: Path) -> None:
    status, line, _ = rig_run(tmp_path, "--", "sh", "-c", "echo c > /proc/sysrq-trigger")
    assert status == 2
    assert line.startswith("rig: error: guest kernel panic: sysrq triggered crash"), line
    assert names_console(line, tmp_path), line


def test_an_oops_is_named(tmp_path: Path) -> None:
    """The oops is a kernel log record written through /dev/kmsg (no module here can make the
    packaged kernel oops on demand): the console, the watch and the verdict are the real ones."""
    oops = "BUG: kernel NULL pointer dereference, address: 0000000000000008"
    status, line, _ = rig_run(
        tmp_path, "--", "sh", "-c", f"echo '<2>{oops}' > /dev/kmsg; sleep 120"
    )
    assert status == 2
    assert line.startswith(f"rig: error: guest kernel oops: {oops}"), line
    assert names_console(line, tmp_path), line


def test_a_hang_is_named(tmp_path: Path) -> None:
    """A real-time spinner on the guest's only CPU, with RT throttling off: the guest prints
    nothing and its sshd never runs again."""
    spin = (
        "echo -1 > /proc/sys/kernel/sched_rt_runtime_us; "
        "exec chrt -f 99 sh -c 'while :; do :; done'"
    )
    # 2 s: each second of it is a second of a spinning vCPU's host CPU.
    status, line, took = rig_run(tmp_path, "--hang-after", "2", "--", "sh", "-c", spin)
    assert status == 2
    assert re.match(
        r"rig: error: guest hung: no console output and no SSH answer for ([2-9]|1[0-2]) s", line
    ), line
    assert names_console(line, tmp_path), line
    assert took < 120


def test_a_lost_ssh_connection_is_named(tmp_path: Path) -> None:
    """The command kills its sshd session process: the connection drops, QEMU and the guest
    run on."""
    status, line, _ = rig_run(tmp_path, "--", "sh", "-c", "kill -9 $PPID; sleep 60")
    assert status == 2
    assert line.startswith(
        "rig: error: lost the SSH connection to the guest while QEMU and the device model still run"
    ), line
    assert names_console(line, tmp_path), line


def test_the_guest_reaches_no_host_service_and_takes_only_its_rig_key(rig: Rig) -> None:
    listener = socket.create_server(("127.0.0.1", 0))  # a host service on the loopback
    port = listener.getsockname()[1]
    try:
        probe = (
            "import socket\ntry:\n"
            f"    socket.create_connection(('10.0.2.2', {port}), 5)\n"
            "    print('reached')\n"
            "except OSError as e:\n"
            "    print('refused', e.errno)\n"
        )
        out = rig.sh(f'python3 -c "{probe}"').stdout.strip()
    finally:
        listener.close()
    assert out.startswith("refused"), out  # restrict=on: slirp forwards nothing out
    ssh_port, identity = rig.ssh_access()
    assert identity.client_key != ensure_client_key().private
    with pytest.raises(SshRefused, match="the guest refused"):
        GuestSsh.connect(
            "127.0.0.1", ssh_port, SshIdentity(ensure_client_key().private, identity.host_key)
        )
