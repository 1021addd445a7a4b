"""`rig bench`: how long the rig's steps take on this machine, each the median of several runs.

Sections, in order (each one's failure is recorded and the others still run):

* host:     trapped-register round trips with no guest (device model alone, C and Python
            socket ping-pongs as floors; rig.bench.host);
* boot:     boot to SSH-ready with the device and mlx4_core, with mlx4_en too (to its
            netdev up), without the device, and from a saved VM on each clock
            (rig.vm.saved: the guest resumed, the card hot-plugged, mlx4_core bound),
            interleaved so all see the same load;
* en:       the same catas fault cycle (fault -> snapshots -> reset and re-probe) N times
            with mlx4_core alone and with mlx4_en loaded and its netdev up, one VM each;
* guest:    one VM booted without the driver: the BAR0 read loop from guest user space
            (rig/bench_guest.py), `modprobe`/`rmmod mlx4_core` N times, then N catas faults
            with MSI-X and one with msi_x=0, each split into phases (rig.benchtimeline);
* traffic:  one VM with mlx4_en: TCP throughput and ping RTT from port 1 to port 2 across
            the card, and the same across a veth pair in the same guest (its own ceiling
            under TCG), interleaved; then catas faults under a transfer: the stream's gap
            (last byte before -> first after) beside the reset and re-probe (rig.traffic);
* replay:   `rig replay` end to end N times, then two at once N times (throughput);
* clock:    `rig replay` on the warped and the real clock, and on the warped clock from a
            saved VM, in turn (warp, real, warp saved, warp, ...), the ratio of each
            warp/real pair (rig.vm.clock, docs/clock.md);
* suite, cold (opt-in): `tox -e e2e`; `rig setup` into an empty temporary RIG_CACHE.

Every other section runs on one clock (--clock; the JSON's options.clock says which). Paired
figures (model vs C ping-pong, device vs no device, card vs veth, warp vs real) take their
samples alternately, A B A B, and their ratio is taken pair by pair (stats.ratios), so a load
that comes and goes on a shared machine weighs on both sides of each pair alike.

VMs of the boot and guest sections run in this process, launched from the main thread (which
outlives them, as rig.machine's PR_SET_PDEATHSIG needs); replays run as `rig replay`
processes, so two can run at once exactly as a user would start them.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cx3 import layout
from rig import __version__, builtin
from rig.bench import host as benchhost
from rig.bench.stats import Results, Spec, document, ratios, to_json
from rig.bench.timeline import RESTARTED, CatasTimeline, catas_timeline
from rig.errors import RigError
from rig.progress import run_logged
from rig.provision.guestfiles import guest_program
from rig.rig import Rig, RigConfig
from rig.traffic import TRAFFIC_MOST, Traffic, fault_under_traffic
from rig.vm import clock as vmclock
from rig.vm.clock import REAL, WARP

logger = logging.getLogger(__name__)

SECTIONS = ("host", "boot", "en", "guest", "traffic", "replay", "clock", "suite", "cold")
DEFAULT_SECTIONS = ("host", "boot", "en", "guest", "traffic", "replay", "clock", "suite")
TRAFFIC_BYTES = 32 << 20  # per throughput run: ~10 s across the card under TCG
TRAFFIC_PINGS = 50
IDLE_WINDOW = 5.0  # s over which an idle rig's CPU is measured
REPO = Path(__file__).resolve().parents[2]
GUEST_SCRIPT = guest_program("bench_guest.py")
GUEST_REMOTE = "/run/rig/bench_guest.py"
BAR_READS = layout.SIZE // 4

SPECS = (
    Spec("boot.device", "boot to SSH-ready, device + mlx4_core bound", "s", 8.0),
    Spec("boot.device.firmware", "  firmware + kernel load", "s"),
    Spec("boot.device.kernel", "  kernel", "s"),
    Spec("boot.device.init", "  init, modprobe mlx4_core included", "s"),
    Spec("boot.device.ssh", "  SSH connection", "s"),
    Spec("boot.device_start", "device model process start (before QEMU)", "s"),
    Spec("boot.nodevice", "boot to SSH-ready, no device", "s"),
    Spec("boot.en", "boot to ready with mlx4_en, its netdev up with carrier", "s"),
    Spec("boot.en_cost", "  mlx4_en's cost to boot (with - without, run by run)", "s", 1.0),
    Spec("boot.device_cost", "device cost: boot with / without", "x"),
    Spec("boot.bound", "boot to ready with device and driver (mlx4_core bound), fresh", "s"),
    Spec("boot.saved", "boot to ready with device and driver, saved VM, real clock", "s", 2.5),
    Spec("boot.saved.restore", "  QEMU start + state loaded, guest running", "s"),
    Spec("boot.saved.ssh", "  SSH connection", "s"),
    Spec("boot.saved.card", "  card hot-plugged, the rig's key and time set, bound", "s"),
    Spec(
        "boot.saved_warp", "boot to ready with device and driver, saved VM, warped clock", "s", 2.5
    ),
    Spec("boot.saved_warp.restore", "  QEMU start + state loaded, guest running", "s"),
    Spec("boot.saved_warp.ssh", "  SSH connection", "s"),
    Spec("boot.saved_warp.card", "  card hot-plugged, the rig's key and time set, bound", "s"),
    # What a rig doing nothing costs the host (QEMU + the model), mlx4_en up: on the warped
    # clock its idle time runs faster, and with it the driver's periodic work (docs/clock.md).
    Spec("boot.idle.real", "an idle rig, mlx4_en up: QEMU + model CPU, real clock (cores)", "x"),
    Spec("boot.idle.warp", "  the same on the warped clock (cores)", "x"),
    Spec("probe.modprobe", "modprobe mlx4_core (probe, devlink registered)", "s"),
    Spec("probe.rmmod", "rmmod mlx4_core", "s"),
    Spec("catas.fault_to_snapshots", "catas fault -> both snapshots on the host", "s", 7.0),
    Spec("catas.detection", "  detection (the driver polls every 5 s)", "s"),
    Spec("catas.error_report", "  error report -> crdump start", "s"),
    Spec("catas.crdump_loop", "  crdump read loop (driver, 1 MiB of BAR0)", "s", 1.0),
    Spec("catas.snapshot_creation", "  fw-health read + snapshot creation", "s"),
    Spec("catas.notification", "  REGION_NEW notifications to the host", "s"),
    Spec("catas.reset_and_reprobe", "reset + re-probe after the fault", "s"),
    Spec("en.core.reset_and_reprobe", "reset + re-probe, mlx4_core alone (fault cycle)", "s"),
    Spec("en.en.reset_and_reprobe", "reset + re-probe, mlx4_en loaded, netdev back up", "s"),
    Spec("en.reset_cost", "  mlx4_en's cost to reset + re-probe (medians)", "s", 1.0),
    Spec("intx.crdump_loop", "crdump read loop with msi_x=0 (INTx)", "s"),
    Spec("intx.per_read", "  per 32-bit read with msi_x=0", "us"),
    Spec("guest.bar_loop", "BAR0 read loop from guest user space (262,144 reads)", "s", 1.0),
    Spec("guest.mapped_read", "  mapped pages, per read (Python's cost taken off)", "ns"),
    Spec("guest.python_item", "  Python's cost per item (anonymous memory)", "ns"),
    Spec("guest.trapped_read", "  trapped pages, per read", "us"),
    Spec("guest.trapped_share", "  trapped pages' share of the loop (4 of 256 pages)", "%"),
    Spec("rtt.guest", "trapped register read from the guest (0xf03fc)", "us"),
    Spec("rtt.model", "trapped register read, C client (as QEMU) -> model", "us"),
    Spec("rtt.model_one_cpu", "the same, client and model on one CPU (warp's rigs)", "us"),
    Spec("rtt.one_cpu_vs_two", "one CPU / the scheduler's placement (run by run)", "x"),
    Spec("rtt.host", "trapped register read, Python client (vfio_user.client)", "us"),
    Spec("rtt.python", "Python socketpair ping-pong, REGION_READ sizes", "us"),
    Spec("rtt.c", "C socketpair ping-pong, REGION_READ sizes", "us"),
    Spec("rtt.model_vs_c", "model round trip (C client) / C ping-pong", "x", 2.0),
    Spec("rtt.host_vs_c", "both ends Python / C ping-pong", "x"),
    Spec("rtt.guest_vs_c", "guest round trip / C ping-pong", "x"),
    Spec("traffic.card.tcp", "TCP port 1 -> port 2 across the card (32 MiB)", "MB/s"),
    Spec("traffic.veth.tcp", "TCP across a veth pair, same guest (its ceiling)", "MB/s"),
    Spec("traffic.card_vs_veth", "  card / veth throughput (run by run)", "x", goal_min=0.5),
    Spec("traffic.card.qemu_cpu", "  QEMU's CPU over the card's run (cores; 1 vCPU)", "x"),
    Spec("traffic.card.model_cpu", "  the device model's CPU over that run (cores)", "x"),
    Spec("traffic.veth.qemu_cpu", "  QEMU's CPU over the veth run (cores)", "x"),
    Spec("traffic.card.rtt", "ping RTT across the card (busybox, average)", "ms"),
    Spec("traffic.veth.rtt", "ping RTT across the veth pair", "ms"),
    Spec("traffic.catas_gap", "TCP gap around a catas fault (last byte -> first)", "s"),
    Spec("traffic.catas_reset", "  reset + re-probe of that fault", "s"),
    Spec("traffic.catas_after", "  recovered -> first byte (restore + TCP's backoff)", "s"),
    Spec("replay.total", "rig replay end to end, warm cache", "s"),
    Spec("replay.boot", "  boot", "s"),
    Spec("replay.fault_to_snapshots", "  fault -> snapshots", "s"),
    Spec("replay.reset_and_reprobe", "  reset + re-probe (as replay waits for it)", "s"),
    Spec("replay.read_and_compare", "  read back and compare", "s"),
    # Issue 16's "rig replay warm <= 8 s" is the default replay on a warm cache, whose saved
    # VM is a cache entry: clock.saved_warp.replay. These two boot the kernel (~10 s of TCG).
    Spec("clock.warp.replay", "rig replay on the warped clock, fresh boot", "s"),
    Spec("clock.warp.fault_to_snapshots", "  catas fault -> both snapshots on the host", "s", 0.5),
    Spec("clock.warp.reset_and_reprobe", "  reset + re-probe", "s", 0.5),
    Spec("clock.real.replay", "rig replay on the real clock, fresh boot", "s"),
    Spec("clock.real.fault_to_snapshots", "  catas fault -> both snapshots on the host", "s"),
    Spec("clock.real.reset_and_reprobe", "  reset + re-probe", "s"),
    Spec("clock.warp_vs_real", "replay warp / real (pair by pair)", "x"),
    Spec(
        "clock.saved_warp.replay",
        "rig replay as by default (warped clock, saved VM), warm cache",
        "s",
        8.0,
    ),
    Spec("clock.saved_warp.boot", "  boot (restore, SSH, card hot-plugged and bound)", "s"),
    Spec("clock.saved_warp.fault_to_snapshots", "  catas fault -> both snapshots", "s", 0.5),
    Spec("clock.saved_warp.reset_and_reprobe", "  reset + re-probe", "s", 0.5),
    Spec("parallel.pair", "two rig replay at once, wall time", "s"),
    Spec("parallel.throughput", "throughput of two at once vs one", "x"),
    Spec("suite.full", "the test suite: tox (lint, types, unit, e2e)", "s", 600.0),
    Spec("suite.unit", "  unit tests", "s"),
    Spec("suite.e2e", "  end-to-end tests, real clock and fresh boots", "s"),
    # issue 16: the same suite on the rig's defaults (tox -e e2e-warp), 2 cores
    Spec("suite.e2e-warp", "  end-to-end tests, warped clock and saved VMs", "s", 100.0),
    Spec("cold.setup", "cold provisioning: rig setup into an empty cache", "s"),
)


@dataclass(frozen=True)
class BenchOptions:
    json_path: Path
    log_dir: Path
    runs: int = 3
    sections: tuple[str, ...] = DEFAULT_SECTIONS
    intx: bool = True  # one catas fault with msi_x=0 in the guest section (~30-60 s)
    kernel: str | None = None
    userspace: str | None = None
    qemu: Path | None = None
    qemu_version: str | None = None
    clock: str | None = None  # rig.vm.clock; None: $RIG_CLOCK or the default
    boot: str | None = None  # rig.vm.saved: "fresh" or "saved"; only the clock section sets it


@dataclass
class BenchRun:
    results: Results
    machine: dict[str, Any]
    options: dict[str, Any]
    duration: float = 0.0
    section_times: dict[str, float] = field(default_factory=dict)

    def document(self) -> dict[str, Any]:
        doc = document(self.results, self.machine, self.options, self.duration)
        doc["section_s"] = dict(self.section_times)
        return doc


def run_bench(opts: BenchOptions) -> BenchRun:
    if opts.runs < 1:
        raise RigError("--runs must be at least 1")
    unknown = set(opts.sections) - set(SECTIONS)
    if unknown:
        raise RigError(f"unknown bench section(s) {sorted(unknown)}; known: {SECTIONS}")
    t0 = time.monotonic()
    opts = replace(opts, clock=vmclock.resolve(opts.clock))  # one clock for every section
    opts.log_dir.mkdir(parents=True, exist_ok=True)
    run = BenchRun(Results(SPECS), describe_host(), _options(opts))
    run.machine.update(_describe_guest(opts))
    sections: dict[str, Callable[[BenchOptions, BenchRun], None]] = {
        "host": _host,
        "boot": _boot,
        "en": _en,
        "guest": _guest,
        "traffic": _traffic,
        "replay": _replay,
        "clock": _clock,
        "suite": _suite,
        "cold": _cold,
    }
    for name in SECTIONS:
        if name not in opts.sections:
            continue
        logger.info(f"bench: {name} ...")
        s0 = time.monotonic()
        try:
            sections[name](opts, run)
        except Exception as e:  # one broken section must not lose the others' figures
            run.results.error(name, f"{type(e).__name__}: {e}")
            logger.info(f"bench: {name} failed: {e}")
        run.section_times[name] = time.monotonic() - s0
        logger.info(f"bench: {name}: {run.section_times[name]:.0f} s")
    run.machine["loadavg_end"] = list(os.getloadavg())
    run.duration = time.monotonic() - t0
    return run


def write_json(run: BenchRun, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_json(run.document()))


# --- the machine ---------------------------------------------------------------------------


def describe_host() -> dict[str, Any]:
    return {
        "cores": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "host_kernel": platform.release(),
        "host_os": _os_name(),
        "python": platform.python_version(),
        "rig": __version__,
        "git_commit": _git_commit(),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "loadavg_start": list(os.getloadavg()),
        "accel": "tcg",
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _os_name() -> str:
    try:
        text = Path("/etc/os-release").read_text()
    except OSError:
        return platform.system()
    m = re.search(r'^PRETTY_NAME="?([^"\n]*)"?', text, re.M)
    return m.group(1) if m else platform.system()


def _git_commit() -> str | None:
    try:
        res = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = res.stdout.strip()
    return commit if res.returncode == 0 and commit else None


def _describe_guest(opts: BenchOptions) -> dict[str, Any]:
    """QEMU and guest kernel versions (provisioning them now if the cache is cold)."""
    from rig.provision.guest import ensure_guest
    from rig.provision.qemu import qemu_for

    try:
        qemu = qemu_for(opts.qemu, opts.qemu_version)
        guest = ensure_guest(opts.kernel, opts.userspace)
    except RigError as e:
        return {"qemu": None, "guest": None, "provision_error": str(e)}
    return {"qemu": qemu.version, "guest": guest.kernel.release}


def _options(opts: BenchOptions) -> dict[str, Any]:
    return {
        "runs": opts.runs,
        "sections": list(opts.sections),
        "intx": opts.intx,
        "kernel": opts.kernel,
        "userspace": opts.userspace,
        "qemu": None if opts.qemu is None else str(opts.qemu),
        "qemu_version": opts.qemu_version,
        "clock": opts.clock,
        # What "warp" meant in this run ($RIG_WARP_SHIFT and $RIG_WARP_RATIO change it).
        "warp": " ".join(vmclock.qemu_args(vmclock.WARP)),
    }


def _guest_flags(opts: BenchOptions) -> list[str]:
    """The guest options again, for the `rig` commands a section runs."""
    flags = {
        "--kernel": opts.kernel,
        "--userspace": opts.userspace,
        "--qemu": opts.qemu and str(opts.qemu),
        "--qemu-version": opts.qemu_version,
        "--clock": opts.clock,
        "--boot": opts.boot,
    }
    return [word for flag, value in flags.items() if value for word in (flag, value)]


# --- host: round trips without a guest ------------------------------------------------------


def _host(opts: BenchOptions, run: BenchRun) -> None:
    r = run.results
    figures = benchhost.round_trips(opts.runs, opts.log_dir)
    for key, values in figures.items():
        for v in values:
            r.add(key, v)
    for key, values in (
        ("rtt.model_vs_c", figures["rtt.model"]),
        ("rtt.host_vs_c", figures["rtt.host"]),
    ):
        for v in ratios(values, figures["rtt.c"]):
            r.add(key, v)
    for v in ratios(figures.get("rtt.model_one_cpu", []), figures["rtt.model"]):
        r.add("rtt.one_cpu_vs_two", v)


# --- boot ----------------------------------------------------------------------------------


def _config(opts: BenchOptions, log_dir: Path, **kw: Any) -> RigConfig:
    # mlx4_core alone unless a figure asks for mlx4_en: it would load behind every probe of
    # the modprobe/rmmod loop (and make its rmmod fail while it holds mlx4_core).
    kw.setdefault("mlx4_en", False)
    kw.setdefault("clock", opts.clock)
    # Fresh boots unless a figure asks for a saved VM: the boot figures are of both, by name.
    kw.setdefault("boot", opts.boot or "fresh")
    return RigConfig(
        log_dir=log_dir,
        kernel=opts.kernel,
        userspace=opts.userspace,
        qemu=opts.qemu,
        qemu_version=opts.qemu_version,
        name="bench",
        **kw,
    )


def _idle_cpu(rig: Rig) -> float:
    """QEMU's and the model's CPU (cores) while nothing is asked of the rig."""
    pids = (rig.machine.pid, rig.device_model.pid)
    before, t0 = sum(map(_cpu_seconds, pids)), time.monotonic()
    time.sleep(IDLE_WINDOW)  # a window to measure over, not an event to wait for
    return (sum(map(_cpu_seconds, pids)) - before) / (time.monotonic() - t0)


def _boot(opts: BenchOptions, run: BenchRun) -> None:
    r = run.results
    with_dev: list[float] = []
    without: list[float] = []
    with_en: list[float] = []
    # Saved VMs on both clocks (each its own saved state: the clock is in QEMU's command
    # line). The first saved boot saves the VM (a fresh boot and a save): not a figure.
    saved = (("boot.saved", REAL), ("boot.saved_warp", WARP))
    for _, clock in saved:
        with Rig(
            _config(opts, opts.log_dir / f"boot-saved-first-{clock}", boot="saved", clock=clock)
        ):
            pass
    for i in range(opts.runs):
        for key, clock in saved:
            log_dir = opts.log_dir / f"boot-saved-{clock}-{i}"
            with Rig(_config(opts, log_dir, boot="saved", clock=clock)) as rig:
                t = rig.boot_times
                assert t.ssh is not None and t.ready is not None
                r.add(key, rig.timings.marks["bound"] - t.launched)
                r.add(f"{key}.restore", t.ready - t.launched)
                r.add(f"{key}.ssh", t.ssh - t.ready)
                r.add(f"{key}.card", rig.timings.marks["bound"] - t.ssh)
        for clock in (REAL, WARP):
            log_dir = opts.log_dir / f"boot-idle-{clock}-{i}"
            with Rig(_config(opts, log_dir, boot="saved", clock=clock, mlx4_en=True)) as rig:
                r.add(f"boot.idle.{clock}", _idle_cpu(rig))
        with Rig(_config(opts, opts.log_dir / f"boot-device-{i}")) as rig:
            t = rig.boot_times
            assert t.ssh is not None and t.ready is not None
            with_dev.append(t.ssh - t.launched)
            r.add("boot.bound", rig.timings.marks["bound"] - t.launched)
            r.add("boot.device", with_dev[-1])
            r.add("boot.device_start", rig.timings.device_start)
            if t.first_output is not None and t.kernel_done is not None:
                r.add("boot.device.firmware", t.first_output - t.launched)
                r.add("boot.device.kernel", t.kernel_done - t.first_output)
                r.add("boot.device.init", t.ready - t.kernel_done)
            r.add("boot.device.ssh", t.ssh - t.ready)
        # The same with mlx4_en, to the netdev up with carrier (what a replay waits for).
        with Rig(_config(opts, opts.log_dir / f"boot-en-{i}", mlx4_en=True)) as rig:
            with_en.append(rig.timings.marks["netdevs_up"] - rig.boot_times.launched)
            r.add("boot.en", with_en[-1])
        # The same boot without the device (mlx4_core is still loaded: it finds nothing).
        with Rig(_config(opts, opts.log_dir / f"boot-nodevice-{i}", with_device=False)) as rig:
            t = rig.boot_times
            assert t.ssh is not None
            without.append(t.ssh - t.launched)
            r.add("boot.nodevice", without[-1])
    for v in ratios(with_dev, without):
        r.add("boot.device_cost", v)
    for en, core in zip(with_en, with_dev, strict=True):
        r.add("boot.en_cost", en - core)


# --- en: the fault cycle with and without mlx4_en ------------------------------------------


def _en(opts: BenchOptions, run: BenchRun) -> None:
    r = run.results
    medians: dict[str, float] = {}  # the two VMs' runs are not paired: compare medians
    for key, en in (("core", False), ("en", True)):
        with Rig(_config(opts, opts.log_dir / f"en-{key}", mlx4_en=en)) as rig:
            rig.device.load_crspace(builtin.crspace_image())  # the path `rig replay` takes
            rig.device.set_health(builtin.health_buffer())
            rig.mlx4.enable_snapshots()
            for _ in range(opts.runs):
                cycle = rig.mlx4.fault("catas")
                r.add(f"en.{key}.reset_and_reprobe", cycle.t_recovered - cycle.arrivals[-1])
                for region, snapshot in cycle.ids.items():  # regions keep 8 at most
                    rig.netlink.delete(rig.region(region), snapshot)
        summary = r.figures[f"en.{key}.reset_and_reprobe"].summary
        assert summary is not None
        medians[key] = summary.median
    r.add("en.reset_cost", medians["en"] - medians["core"])


# --- guest: read loop, probe, catas ---------------------------------------------------------


def _real_clock(opts: BenchOptions, run: BenchRun, keys: tuple[str, ...]) -> BenchOptions:
    """`opts` on the real clock, for a section whose figures the guest times on its own
    clock: on warp that clock stands still while the vCPU waits for the device (icount), the
    very latency measured (a trapped read came out at 0.001 us). The clock section times
    the fault on both clocks."""
    if opts.clock == REAL:
        return opts
    for key in keys:
        run.results.note(key, "real clock whatever --clock says: timed on the guest's clock")
    return replace(opts, clock=REAL)


def _guest(opts: BenchOptions, run: BenchRun) -> None:
    r = run.results
    opts = _real_clock(opts, run, ("probe.modprobe", "guest.bar_loop", "catas.fault_to_snapshots"))
    # No driver at boot: BAR0 can be mapped from user space only while no driver claims it.
    with Rig(_config(opts, opts.log_dir / "guest", load_driver=False)) as rig:
        rig.sh(f"mkdir -p {Path(GUEST_REMOTE).parent}")
        rig.put(GUEST_SCRIPT, GUEST_REMOTE)
        bdf, _ = rig.mlx4.pci_device()
        _read_loop(rig, bdf, opts.runs, run)
        res = _guest_json(rig, f"probe {bdf} --param msi_x=1 --runs {opts.runs}")
        for ns in res["ns"]["modprobe"]:
            r.add("probe.modprobe", ns / 1e9)
        for ns in res["ns"]["rmmod"]:
            r.add("probe.rmmod", ns / 1e9)

        _load_driver(rig, "msi_x=1")
        rig.device.load_crspace(builtin.crspace_image())  # the path `rig replay` takes
        rig.device.set_health(builtin.health_buffer())
        for _ in range(opts.runs):
            tl = _catas(rig, timeout=60)
            for name in (
                "fault_to_snapshots",
                "detection",
                "error_report",
                "crdump_loop",
                "snapshot_creation",
                "notification",
                "reset_and_reprobe",
            ):
                value = getattr(tl, name)
                if value is not None:
                    r.add(f"catas.{name}", value)
        if opts.intx:
            rig.mlx4.unload()
            _load_driver(rig, "msi_x=0")
            # Every read of BAR0 is trapped now: the crdump takes tens of seconds.
            tl = _catas(rig, timeout=600)
            r.add("intx.crdump_loop", tl.crdump_loop)
            r.add("intx.per_read", tl.crdump_loop / BAR_READS * 1e6)
            r.note("intx.crdump_loop", "one run (it is slow)")


def _guest_json(rig: Rig, args: str, timeout: float = 300.0) -> dict[str, Any]:
    res = rig.sh(f"python3 {GUEST_REMOTE} {args}", timeout=timeout)
    reply: dict[str, Any] = json.loads(res.stdout.strip().splitlines()[-1])
    return reply


def _read_loop(rig: Rig, bdf: str, runs: int, run: BenchRun) -> None:
    r = run.results
    trapped = ",".join(hex(p) for p in layout.TRAPPED_PAGES)
    res = _guest_json(
        rig, f"readloop {bdf} --trapped {trapped} --register {layout.SEMAPHORE:#x} --runs {runs}"
    )
    ns, reads = res["ns"], res["reads"]
    for i in range(runs):
        item = ns["anon"][i] / reads["anon"]
        r.add("guest.bar_loop", ns["whole"][i] / 1e9)
        r.add("guest.python_item", item)
        r.add("guest.mapped_read", ns["mapped"][i] / reads["mapped"] - item)
        r.add("guest.trapped_read", (ns["trapped"][i] / reads["trapped"] - item) / 1000)
        parts = ns["mapped"][i] + ns["trapped"][i]
        r.add("guest.trapped_share", 100 * ns["trapped"][i] / parts)
        register = (ns["register"][i] - ns["loop"][i]) / reads["register"] / 1000
        r.add("rtt.guest", register)
    c = run.results.figures["rtt.c"].samples
    for v in ratios(run.results.figures["rtt.guest"].samples, c):
        r.add("rtt.guest_vs_c", v)


def _load_driver(rig: Rig, param: str) -> None:
    rig.sh(f"modprobe mlx4_core {param}", timeout=120)
    rig.dev_handle = rig.mlx4.wait_bound()


def _catas(rig: Rig, timeout: float) -> CatasTimeline:
    """Take a catas fault through the driver; its timeline from the device's events, the
    console's line stamps and the notifications' arrivals. Deletes the snapshots after."""
    rig.mlx4.enable_snapshots()
    console = rig.console
    # Asking for events from far ahead returns none, just the index of the next one.
    first_event = rig.device.events(1 << 62).next
    first_line = len(console.lines())
    text_start = len(console.text)
    cycle = rig.mlx4.fault("catas", timeout=timeout)
    # The console reader stamps a line when its newline arrives: wait for that stamp.
    console.wait_for(RESTARTED, 120, start=text_start)
    tl = catas_timeline(
        rig.device.events(first_event).events,
        console.lines()[first_line:],
        cycle.arrivals,
        warped=rig.clock == WARP,
    )
    for region, snapshot in cycle.ids.items():  # the regions hold a few snapshots only
        rig.netlink.delete(rig.region(region), snapshot)
    return tl


# --- traffic: across the card and across a veth pair ----------------------------------------


def _cpu_seconds(pid: int | None) -> float:
    """User + system CPU time of process `pid`, all its threads (/proc/PID/stat)."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _traffic(opts: BenchOptions, run: BenchRun) -> None:
    r = run.results
    opts = _real_clock(opts, run, ("traffic.card.tcp", "traffic.card.rtt"))
    with Rig(_config(opts, opts.log_dir / "traffic", mlx4_en=True)) as rig:
        rates: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(opts.runs):  # interleaved, so both see the same load
            for veth in (False, True):
                kind = "veth" if veth else "card"
                with Traffic(rig, veth=veth) as t:
                    ping = t.ping(TRAFFIC_PINGS)
                    if "avg" in ping.rtt_ms:
                        r.add(f"traffic.{kind}.rtt", ping.rtt_ms["avg"])
                    t0 = time.monotonic()
                    cpu0 = _cpu_seconds(rig.machine.pid), _cpu_seconds(rig.device_model.pid)
                    result = t.tcp(TRAFFIC_BYTES)
                    cpu1 = _cpu_seconds(rig.machine.pid), _cpu_seconds(rig.device_model.pid)
                    wall = time.monotonic() - t0  # the programs' start-up included
                    result.check()
                    rates[veth].append(result.received.bytes / result.received.elapsed / 1e6)
                    r.add(f"traffic.{kind}.tcp", rates[veth][-1])
                    # Which side is the bottleneck: QEMU at one core is the vCPU saturated
                    r.add(f"traffic.{kind}.qemu_cpu", (cpu1[0] - cpu0[0]) / wall)
                    if not veth:
                        r.add("traffic.card.model_cpu", (cpu1[1] - cpu0[1]) / wall)
        for v in ratios(rates[False], rates[True]):
            r.add("traffic.card_vs_veth", v)
        rig.mlx4.enable_snapshots()
        with Traffic(rig) as t:
            for _ in range(opts.runs):
                done = fault_under_traffic(rig, t, TRAFFIC_MOST, "catas")
                done.result.check()
                cycle = done.cycle
                r.add("traffic.catas_gap", done.gap.s)
                r.add("traffic.catas_reset", cycle.t_recovered - cycle.arrivals[-1])
                r.add("traffic.catas_after", done.gap.first_byte_s - done.gap.recovered_s)
                for region, snapshot in cycle.ids.items():  # regions keep 8 at most
                    rig.netlink.delete(rig.region(region), snapshot)


# --- replay: end to end, one and two at once -----------------------------------------------


def _replay_command(opts: BenchOptions, out: Path) -> list[str]:
    return [sys.executable, "-m", "rig", "replay", "--out", str(out), *_guest_flags(opts)]


def _start_replay(opts: BenchOptions, out: Path) -> subprocess.Popen[bytes]:
    out.mkdir(parents=True, exist_ok=True)
    with (out.parent / f"{out.name}.log").open("wb") as log:
        return subprocess.Popen(
            _replay_command(opts, out),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def _finish_replay(proc: subprocess.Popen[bytes], out: Path) -> dict[str, Any]:
    status = proc.wait(timeout=900)
    try:
        report: dict[str, Any] = json.loads((out / "report.json").read_text())
    except (OSError, ValueError):
        report = {}
    if status != 0 or not report.get("ok"):
        errors = "; ".join(report.get("errors", [])) or f"see {out.parent / out.name}.log"
        raise RigError(f"rig replay --out {out} failed (exit {status}): {errors}")
    return report


def _replay(opts: BenchOptions, run: BenchRun) -> None:
    r = run.results
    singles: list[float] = []
    for i in range(opts.runs):
        out = opts.log_dir / f"replay-{i}"
        t0 = time.monotonic()
        report = _finish_replay(_start_replay(opts, out), out)
        singles.append(time.monotonic() - t0)
        r.add("replay.total", singles[-1])
        t = report["timings"]
        for name in ("boot", "fault_to_snapshots", "reset_and_reprobe", "read_and_compare"):
            if name in t:
                r.add(f"replay.{name}", t[name])
    one = sorted(singles)[len(singles) // 2]
    for i in range(opts.runs):
        outs = [opts.log_dir / f"parallel-{i}-{k}" for k in (0, 1)]
        t0 = time.monotonic()
        procs = [_start_replay(opts, out) for out in outs]
        for proc, out in zip(procs, outs, strict=True):
            _finish_replay(proc, out)
        pair = time.monotonic() - t0
        r.add("parallel.pair", pair)
        r.add("parallel.throughput", 2 * one / pair)


# --- clock: the same replay on the warped and the real clock -------------------------------


def _clock(opts: BenchOptions, run: BenchRun) -> None:
    """`rig replay` alternately on each clock, booted fresh, then on the warped clock from a
    saved VM (A B C A B C ...); the ratio of each warp/real pair."""
    r = run.results
    variants = (
        (WARP, replace(opts, clock=WARP, boot="fresh")),
        (REAL, replace(opts, clock=REAL, boot="fresh")),
        ("saved_warp", replace(opts, clock=WARP, boot="saved")),
    )
    # The first replay from a saved VM saves it (a fresh boot and a save): not a figure.
    first = opts.log_dir / "clock-saved-first"
    _finish_replay(_start_replay(variants[2][1], first), first)
    for i in range(opts.runs):
        for key, variant in variants:
            out = opts.log_dir / f"clock-{key}-{i}"
            t0 = time.monotonic()
            report = _finish_replay(_start_replay(variant, out), out)
            r.add(f"clock.{key}.replay", time.monotonic() - t0)
            for name in ("boot", "fault_to_snapshots", "reset_and_reprobe"):
                if name in report["timings"] and f"clock.{key}.{name}" in r.figures:
                    r.add(f"clock.{key}.{name}", report["timings"][name])
    warp, real = (r.figures[f"clock.{c}.replay"].samples for c in (WARP, REAL))
    for v in ratios(warp, real):
        r.add("clock.warp_vs_real", v)


# --- the test suite; opt-in: cold provisioning ---------------------------------------------


def _timed(
    cmd: list[str],
    log: Path,
    what: str,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 7200,
) -> float:
    """Run `cmd` to completion, output in `log` with a heartbeat; its wall time."""
    t0 = time.monotonic()
    run_logged(cmd, log, what, cwd=cwd, env=env, timeout=timeout)
    return time.monotonic() - t0


def _suite(opts: BenchOptions, run: BenchRun) -> None:
    """`tox` as the README runs it (every default env); each env's time from tox's summary."""
    tox = shutil.which("tox")
    if tox is None or not (REPO / "tox.ini").is_file():
        raise RigError(
            "timing the suite needs tox and a checkout with tox.ini "
            "(./rigw bench has both; or pass --no-suite)"
        )
    log = opts.log_dir / "suite.log"
    run.results.add("suite.full", _timed([tox], log, "tox", cwd=REPO))
    for env, seconds in tox_env_seconds(log.read_text()).items():
        if f"suite.{env}" in run.results.figures:
            run.results.add(f"suite.{env}", seconds)


def tox_env_seconds(summary: str) -> dict[str, float]:
    """Each passed env's seconds from tox 4's summary, a line per env:
    "  e2e-warp: OK (226.34=setup[1.20]+cmd[225.14] seconds)"."""
    found = re.findall(r"^\s*([\w-]+): OK \(([\d.]+)=", summary, re.M)
    return {env: float(seconds) for env, seconds in found}


def _cold(opts: BenchOptions, run: BenchRun) -> None:
    cache = Path(tempfile.mkdtemp(prefix="rig-cold-cache-"))
    try:
        cmd = [sys.executable, "-m", "rig", "setup", *_guest_flags(opts)]
        if opts.qemu:
            run.results.note("cold.setup", f"QEMU not built: --qemu {opts.qemu}")
        env = dict(os.environ, RIG_CACHE=str(cache))
        log = opts.log_dir / "cold-setup.log"
        run.results.add("cold.setup", _timed(cmd, log, "rig setup", env=env))
    finally:
        shutil.rmtree(cache, ignore_errors=True)
