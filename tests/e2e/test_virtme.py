"""The card in virtme-ng, the way netdev's CI boots kernels: `vng --run` on the rig's QEMU
(built with virtfs: vng shares the host's root over 9p) with the card's arguments from
`cx3-device --print-qemu-args` in `--qemu-opts`. In the guest (tests/e2e/virtme_guest.sh)
mlx4_core binds the card and lists its regions; the host injects a catas through the control
socket; the guest dumps the driver's cr-space snapshot, which must equal the device's truth.

The kernel is Debian's generic flavour of the rig's default kernel (same release, -amd64
instead of -cloud-amd64): the cloud flavour is built without 9p (CONFIG_NET_9P is not set), so
vng cannot mount its root there. vng's initramfs needs a static busybox: the rig's own.
"""

from __future__ import annotations

import os
import queue
import re
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cx3.client import ControlClient
from rig.cache import cache_root
from rig.formats.compare import hexdump_diff
from rig.formats.dumptext import parse_dump_text
from rig.mlx4 import RECOVERY_TIMEOUT, SNAPSHOT_TIMEOUT
from rig.provision.initramfs import ensure_busybox
from rig.provision.kernel import GuestKernel, ensure_kernel
from rig.provision.qemu import ensure_qemu, lists_device
from tests.e2e.test_standalone import TIMEOUT

pytestmark = [pytest.mark.e2e, pytest.mark.virtme]

GUEST_SCRIPT = Path(__file__).with_name("virtme_guest.sh")
MEMORY = "2G"
# vng boots the generic kernel under TCG, loads mlx4_core and the 9p modules: minutes.
BOOT_TIMEOUT = 600.0
MARK = "cx3-vng: "


def generic_flavour(kernel: GuestKernel) -> str:
    """The kernel spec of `kernel`'s generic flavour: the same Debian release and version."""
    m = re.fullmatch(r"debian:(linux-image-\S+)-cloud-amd64(-unsigned)?=(\S+)", kernel.origin)
    if m is None:
        pytest.fail(f"not a Debian cloud-amd64 kernel: {kernel.origin}")
    return f"deb:{m[1]}-amd64{m[2] or ''}={m[3]}"


def lines_of(stream: Iterable[str]) -> queue.Queue[str | None]:
    """The lines a pipe yields, through a queue (None at its end), to read with timeouts."""
    q: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        for line in stream:
            q.put(line)
        q.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return q


def until(lines: queue.Queue[str | None], marker: str, timeout: float, seen: list[str]) -> str:
    """Read lines into `seen` up to the first that starts with `marker`; returns it."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            pytest.fail(f"no {marker!r} from the guest in {timeout:.0f} s; it said: {seen[-20:]}")
        if line is None:
            pytest.fail(f"the guest ended before {marker!r}; it said: {seen[-20:]}")
        seen.append(line)
        if line.startswith(marker):
            return line


@dataclass(frozen=True)
class Card:
    control: Path  # its control socket
    attach: list[str]  # the QEMU arguments that attach it
    process: subprocess.Popen[str]


@pytest.fixture
def card(tmp_path: Path) -> Iterator[Card]:
    """cx3-device standing by for one QEMU (--exit-with-client)."""
    sock, ctl = tmp_path / "cx3.sock", tmp_path / "cx3.ctl"
    model = subprocess.Popen(
        [
            *(sys.executable, "-m", "cx3", "--socket", str(sock), "--control", str(ctl)),
            *("--print-qemu-args", "--memory", MEMORY, "--exit-with-client"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert model.stdout is not None
        assert model.stdout.readline() == "ready\n"
        yield Card(ctl, shlex.split(model.stdout.readline()), model)
    finally:
        if model.poll() is None:  # the test failed before its QEMU came and went
            model.kill()
            model.wait()


# The guest's root is the host's: virtme-ng-init runs the host's udevd to name its script's
# virtio-serial ports. Without it the script's output goes to the console, which vng sends
# to /dev/null: the guest said nothing for 6 minutes (a host without Debian's udev).
UDEVD = ("/lib/systemd/systemd-udevd", "/usr/lib/systemd/systemd-udevd", "/sbin/udevd")


def test_virtme_ng_boots_the_card_and_reads_a_catas_snapshot(tmp_path: Path, card: Card) -> None:
    if not any(Path(p).exists() for p in UDEVD):
        pytest.fail("virtme-ng needs the host's udevd: apt-get install udev (as .ci/run does)")
    qemu = ensure_qemu()
    help_text = subprocess.run(
        [str(qemu.binary), "-machine", "none", "-device", "help"],
        capture_output=True,
        text=True,
        check=True,
        timeout=TIMEOUT,
    ).stdout
    assert lists_device(help_text, "virtio-9p-pci"), f"{qemu.binary} has no virtio-9p-pci"
    kernel = ensure_kernel(generic_flavour(ensure_kernel()))
    busybox, _ = ensure_busybox(cache_root() / "logs" / "busybox.log")
    firmware = [arg for d in qemu.firmware_dirs for arg in ("-L", str(d))]
    vng = [
        str(Path(sys.executable).with_name("vng")),
        *("--run", str(kernel.vmlinuz), "--qemu", str(qemu.binary), "--busybox", str(busybox)),
        # TCG as everywhere in the rig; the 9p root rather than virtiofs (no virtiofsd), so
        # no microvm either: the card needs a PCI bus.
        *("--disable-kvm", "--force-9p", "--disable-microvm"),
        *("--memory", MEMORY, "--cpus", "2"),
        *("--qemu-opts", shlex.join([*firmware, *card.attach])),
        *("--exec", f"sh {GUEST_SCRIPT}"),
    ]
    console = tmp_path / "vng-console.log"  # vng sends the kernel's console to stderr
    # vng runs virtme-run from PATH: the one installed beside this interpreter.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    with console.open("w") as err:
        run = subprocess.Popen(
            vng, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, text=True, env=env
        )
    try:
        assert run.stdout is not None
        lines, seen = lines_of(run.stdout), list[str]()
        until(lines, MARK + "waiting for the fault", BOOT_TIMEOUT, seen)
        listed = [line.strip() for line in seen if re.match(r"pci/\S+/cr-space: ", line)]
        assert listed, f"`devlink region show` listed no cr-space: {seen}"
        print(f"guest lists {listed[0]}")
        with ControlClient(card.control) as control:
            control.fault("catas")
            heading = until(lines, MARK, SNAPSHOT_TIMEOUT["catas"] + RECOVERY_TIMEOUT, seen)
            start = len(seen)
            until(lines, MARK + "end", BOOT_TIMEOUT, seen)
            crdumps = control.crdumps()
            assert len(crdumps) == 1, crdumps
            truth = control.crdump(crdumps[0].index)
        assert run.wait(timeout=TIMEOUT) == 0, f"vng failed; see {console}"
        assert card.process.wait(timeout=TIMEOUT) == 0  # gone with vng's QEMU
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    _, snapshot = parse_dump_text("".join(seen[start:-1]), "the guest's region dump")
    print(f"guest dumped {heading[len(MARK) :].strip()}: {len(snapshot)} bytes")
    assert snapshot == truth.image, hexdump_diff(truth.image, snapshot)
    print(f"equal to the device's crdump {truth.index} ({len(truth.image)} bytes)")
