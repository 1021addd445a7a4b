"""The main job: replay a firmware crash through the real driver and prove the snapshots right.

Boot the rig, load the firmware state into the device, make the driver hit the fault, wait
for the REGION_NEW notifications, then read every new snapshot over SSH (iproute2) and over
netlink (pyroute2) and compare both, byte for byte, with what BAR0 and the health buffer
held when the driver read them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from cx3 import layout as cr
from cx3.wire import Crdump

from . import __version__, builtin
from .compare import diff, hexdump_diff
from .dumptext import load_region_file
from .errors import RigError
from .progress import info, step
from .registers import explain
from .report import Comparison, Report, SnapshotReport, sha256
from .session import REGIONS, Rig, RigConfig
from .ssh import Background

FAULTS = ("catas", "cmd-timeout", "closing-cmd")
# How long the driver may take to turn each fault into snapshots: the catas poll runs every
# 5 s; a command that never completes is given up after the driver's 60 s timeout.
SNAPSHOT_TIMEOUT = {"catas": 40.0, "cmd-timeout": 150.0, "closing-cmd": 60.0}


@dataclass(frozen=True)
class ReplayOptions:
    out: Path
    crspace: Path | None = None
    health: Path | None = None
    fault: str = "catas"
    kernel: str | None = None
    qemu: Path | None = None
    msi_x: bool = True
    catas_words: tuple[int, ...] = builtin.CATAS_WORDS
    #: For tests: alter the device's ground truth before comparing (must make the run fail).
    truth_hook: Callable[[Crdump], Crdump] | None = None


class NoSnapshot(RigError):
    pass


def load_inputs(opts: ReplayOptions, report: Report) -> tuple[bytes, bytes]:
    if opts.fault not in FAULTS:
        raise RigError(f"unknown fault {opts.fault!r}; choose one of {', '.join(FAULTS)}")
    image = _input(opts.crspace, cr.SIZE, "CR-space", builtin.crspace_image, "crspace", report)
    health = _input(opts.health, cr.HEALTH_SIZE, "health buffer", builtin.health_buffer,
                    "health", report)
    return image, health


def _input(path: Path | None, size: int, what: str, default: Callable[[], bytes], key: str,
           report: Report) -> bytes:
    report.inputs[key] = str(path) if path is not None else "built-in"
    return load_region_file(path, size, what) if path is not None else default()


def run_replay(opts: ReplayOptions) -> Report:
    """Run the whole job; the report says what agreed. Never raises RigError."""
    opts.out.mkdir(parents=True, exist_ok=True)
    report = Report(versions={"rig": __version__})
    report.fault = {"kind": opts.fault}
    t_start = time.monotonic()
    try:
        image, health = load_inputs(opts, report)
        config = RigConfig(log_dir=opts.out, kernel=opts.kernel, qemu=opts.qemu, msi_x=opts.msi_x)
        with Rig(config) as rig:
            report.versions.update(
                qemu=rig.qemu_version, kernel=rig.kernel_release, kernel_origin=rig.kernel_origin
            )
            report.timings.update(provision=rig.timings.provision, boot=rig.timings.boot)
            _replay(rig, opts, image, health, report)
    except RigError as e:
        report.errors.append(str(e))
    report.timings["total"] = time.monotonic() - t_start
    report.artifacts = {
        p.name: p.name
        for p in sorted(opts.out.iterdir())
        if p.is_file() and p.name != "report.json"
    }
    report.ok = (
        not report.errors
        and bool(report.snapshots)
        and all(
            s.agree and all(c["register"] for c in s.changed_from_input) for s in report.snapshots
        )
    )
    report.write(opts.out)
    return report


def _replay(rig: Rig, opts: ReplayOptions, image: bytes, health: bytes, report: Report) -> None:
    rig.device.load_crspace(image)
    rig.device.set_health(health)
    rig.enable_snapshots()
    crdumps_before = len(rig.device.crdumps())

    t_fault = 0.0

    def inject() -> Background | None:
        nonlocal t_fault
        t_fault = time.monotonic()
        reload = _inject(rig, opts, report)
        rig.netlink.prestart()  # its start-up overlaps the driver's detection and reset
        return reload

    try:
        with step(f"injecting fault {opts.fault}, waiting for the driver's snapshots"):
            reload, events = rig.netlink.notifications_during(
                inject, len(REGIONS), SNAPSHOT_TIMEOUT[opts.fault])
            t_snap = time.monotonic()
    except RigError as e:
        raise NoSnapshot(
            f"no snapshot after the {opts.fault} fault: {_why_no_snapshot(rig)} ({e})"
        ) from e

    ids = {e["region"]: e["snapshot"] for e in events if e["cmd"] == "new"}
    if sorted(ids) != sorted(REGIONS) or len(set(ids.values())) != 1:
        raise RigError(f"unexpected region notifications: {events}")
    crdumps = rig.device.crdumps()
    if len(crdumps) <= crdumps_before:
        raise RigError("the driver made snapshots but the device saw no crdump start")
    truth = rig.device.crdump(crdumps[-1].index)
    report.timings["fault_to_snapshots"] = t_snap - t_fault
    report.timings["detection"] = truth.t - t_fault
    report.timings["crdump_and_snapshot"] = t_snap - truth.t

    with step("waiting for the device reset and re-probe"):
        t0 = time.monotonic()
        if reload is not None:
            status = reload.wait(SNAPSHOT_TIMEOUT[opts.fault])
            if status != 0:
                raise RigError(
                    f"`devlink dev reload` failed after the fault (exit {status}): "
                    f"{reload.stderr().strip()}"
                )
        else:
            line = rig.wait_kmsg("mlx4_restart_one was ended", timeout=60)
            if "ret=0" not in line:
                raise RigError(f"the driver did not recover: {line}")
        report.timings["reset_and_reprobe"] = time.monotonic() - t0

    if opts.truth_hook is not None:
        truth = opts.truth_hook(truth)
    with step("reading the snapshots over SSH (devlink) and netlink (pyroute2)"):
        t0 = time.monotonic()
        for region in REGIONS:
            report.snapshots.append(
                _check(rig, region, ids[region], truth, image, health, opts.out)
            )
        report.timings["read_and_compare"] = time.monotonic() - t0


def _inject(rig: Rig, opts: ReplayOptions, report: Report) -> Background | None:
    """Make the driver hit the fault; returns the running reload for reload-driven faults."""
    if opts.fault == "catas":
        report.fault["catas_words"] = [f"{w:#010x}" for w in opts.catas_words]
        rig.device.fault("catas", words=opts.catas_words)
        return None
    # A command fault needs a command: in steady state mlx4_core sends none, but a reload
    # tears down (CLOSE_PORT first, then the closing commands) and probes again.
    if opts.fault == "cmd-timeout":
        rig.device.fault("cmd_timeout")
    else:
        rig.device.fault("closing_cmd")
    report.fault["trigger"] = "devlink dev reload"
    return rig.machine.ssh.start(f"devlink dev reload {rig.dev_handle}")


def _why_no_snapshot(rig: Rig) -> str:
    rig.check_health()
    dmesg = rig.dmesg()
    if "devlink snapshot disabled, skipping" in dmesg:
        return "the driver skipped it: region_snapshot_enable is false"
    if "doesn't support health buffer access" in dmesg:
        return "the driver skipped it: the firmware advertises no health buffer"
    if "Internal error detected" not in dmesg and "timed out" not in dmesg:
        return f"the driver never noticed the fault ({rig.driver_complaint()})"
    return f"the driver noticed the fault but made no snapshot ({rig.driver_complaint()})"


def _check(
    rig: Rig, region: str, snap_id: int, truth: Crdump, image: bytes, health: bytes, out: Path
) -> SnapshotReport:
    handle = rig.region(region)
    cli = rig.devlink.dump(handle, snap_id)
    nl = rig.netlink.read(handle, snap_id)
    expected = truth.image if region == "cr-space" else truth.health
    given = image if region == "cr-space" else health
    name = f"{region}-{snap_id}"
    (out / f"{name}.bin").write_bytes(cli)
    if nl != cli:
        (out / f"{name}.netlink.bin").write_bytes(nl)
    (out / f"{name}.truth.bin").write_bytes(expected)
    comparisons = []
    diffs = []
    for a, a_data, b, b_data in (
        ("truth", expected, "cli", cli),
        ("truth", expected, "netlink", nl),
        ("cli", cli, "netlink", nl),
    ):
        d = diff(a_data, b_data)
        comparisons.append(Comparison(a, b, d.equal, d.count, d.first_offsets))
        if not d.equal:
            diffs.append(
                f"--- {a} vs {b} ({d.count} bytes differ)\n" + hexdump_diff(a_data, b_data, (a, b))
            )
    diff_path = None
    if diffs:
        diff_path = f"{name}.diff.txt"
        (out / diff_path).write_text("\n".join(diffs))
        info(f"{handle} snapshot {snap_id}: MISMATCH, see {out / diff_path}")
    changes = _changes_from_input(region, given, expected)
    return SnapshotReport(
        region=region,
        id=snap_id,
        size=len(cli),
        sha256=sha256(cli),
        path=f"{name}.bin",
        agree=not diffs,
        comparisons=comparisons,
        changed_from_input=changes,
        diff_path=diff_path,
    )


def _changes_from_input(region: str, given: bytes, truth: bytes) -> list[dict[str, object]]:
    """Where the device's truth differs from the user's input, and why (or UNEXPLAINED)."""
    if region == "cr-space":
        return [c.as_dict() for c in explain(given, truth)]
    # The health buffer has no live words: the driver reads it as loaded.
    d = diff(given, truth)
    if d.equal:
        return []
    return [
        {"offset": d.first_offsets[0], "length": d.count, "register": None, "why": "UNEXPLAINED"}
    ]


def tamper(offset: int) -> Callable[[Crdump], Crdump]:
    """A truth hook flipping one CR-space byte: the comparison must then fail there."""

    def hook(truth: Crdump) -> Crdump:
        image = bytearray(truth.image)
        image[offset] ^= 0xFF
        return replace(truth, image=bytes(image))

    return hook
