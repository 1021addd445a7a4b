"""The main job: replay a firmware crash through the real driver and prove the snapshots right.

Boot the rig, load the firmware state into the device, read CR-space live with mstflint's
`mstregdump` in the guest and compare it with the device's BAR0, make the driver hit the
fault, wait for the REGION_NEW notifications, then read every new snapshot over SSH
(iproute2) and over netlink (pyroute2) and compare both, byte for byte, with what BAR0 and
the health buffer held when the driver read them. Each reader is one row of the report
(rig.jobs.readers); report.html, beside report.json, draws the fault's timeline, a map of
CR-space and the decoded catas words and health buffer, on a failure too.

With `traffic`, a TCP transfer runs from port 1 to port 2 across the card while the fault is
taken (rig.traffic.fault_under_traffic): once the driver has recovered, the path is restored
(the re-created netdevs moved back into their namespaces) and the transfer must complete with
the SHA-256 it started with — TCP retransmits across the reset — or the run fails saying
where it broke. report.json's `traffic` holds both ends' bytes and hashes and the gap.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cx3 import layout as cr
from rig import __version__, builtin
from rig.errors import KernelFailure, RigError, UsageError
from rig.formats import crmap, reporthtml
from rig.formats.compare import diff, hexdump_diff
from rig.formats.coverage import coverage
from rig.formats.crmap import Pair
from rig.formats.mstdump import format_mstdump, parse_address_csv
from rig.formats.regionfile import AUTO, RegionImage, load_region_file
from rig.formats.registers import explain
from rig.formats.report import Comparison, Report, SnapshotReport, sha256
from rig.jobs.readers import check_mstregdump, snapshot_reader, take_mstregdump
from rig.mlx4 import FAULTS, REGIONS, FaultCycle
from rig.progress import step, step_cut_short
from rig.rig import Rig, RigConfig
from rig.signals import Interrupted
from rig.timeline import fault_marks
from rig.traffic import TRAFFIC_MOST, Traffic, fault_under_traffic
from rig.vm.clock import WARP

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReplayOptions:
    out: Path
    crspace: Path | None = None
    health: Path | None = None
    crspace_format: str = AUTO  # or a rig.formats.regionfile.FORMATS key
    fault: str = "catas"
    kernel: str | None = None
    userspace: str | None = None
    qemu: Path | None = None
    qemu_version: str | None = None
    clock: str | None = None  # rig.vm.clock; None: $RIG_CLOCK or the default
    msi_x: bool = True
    mlx4_en: bool = True
    netdev_up: bool = True
    boot: str | None = None  # None: $RIG_BOOT or rig.rig.DEFAULT_BOOT
    catas_words: tuple[int, ...] = builtin.CATAS_WORDS
    traffic: bool = False  # a TCP transfer across the card through the fault
    traffic_bytes: int = TRAFFIC_MOST  # its most: paced, it ends TAIL bytes after the recovery


@dataclass(frozen=True)
class Inputs:
    crspace: RegionImage
    health: RegionImage
    # The cr-space snapshot's dwords written as mstregdump text: the input's own list when
    # it was mstregdump text, else mstflint's ConnectX3.csv.
    mstdump_addresses: tuple[int, ...]


# catas.c dump_err_buf(): each internal-error word as the driver read it.
CATAS_PRINTED = re.compile(r"buf\[([0-9a-f]{2})\]: ([0-9a-f]{8})")
LIVE_DUMP = "live-crspace.mstdump"  # mstregdump's output before the fault, as it printed it


@dataclass
class Evidence:
    """What report.html draws beyond report.json, gathered as far as the run got."""

    inputs: Inputs | None = None
    pairs: list[Pair] = field(default_factory=list)  # the comparisons the CR-space map shows
    capture: bytes | None = None  # the device's BAR0 at the crdump
    health: bytes | None = None  # and its health buffer


def load_inputs(opts: ReplayOptions, report: Report) -> Inputs:
    """Check the options and read the inputs: every problem is found here, before a boot."""
    if opts.fault not in FAULTS:
        raise UsageError(f"unknown fault {opts.fault!r}; choose one of {', '.join(FAULTS)}")
    if opts.traffic and not (opts.mlx4_en and opts.netdev_up):
        raise UsageError("--traffic needs mlx4_en and the netdevs up (drop --no-en/--netdev-down)")
    # A dump of part of CR-space (mstregdump's ~14%) is completed from the built-in image.
    crspace = _input(
        opts.crspace,
        cr.SIZE,
        "CR-space",
        builtin.crspace_image,
        "crspace",
        report,
        opts.crspace_format,
        partial=True,
    )
    health = _input(
        opts.health, cr.HEALTH_SIZE, "health buffer", builtin.health_buffer, "health", report
    )
    addresses = crspace.addresses
    if addresses is None:
        from rig.provision.mstflint import ensure_connectx3_csv

        csv = ensure_connectx3_csv()
        addresses = parse_address_csv(csv.read_text(), str(csv))
    return Inputs(crspace, health, addresses)


def _input(
    path: Path | None,
    size: int,
    what: str,
    default: Callable[[], bytes],
    key: str,
    report: Report,
    fmt: str = AUTO,
    partial: bool = False,
) -> RegionImage:
    if path is None:
        image = RegionImage.whole(default(), "built-in")
        report.inputs[key] = "built-in"
    else:
        image = load_region_file(path, size, what, fmt, default if partial else None)
        report.inputs[key] = str(path)
    report.inputs[f"{key}_format"] = image.format
    return image


def run_replay(opts: ReplayOptions) -> Report:
    """Run the whole job; the report says what agreed and its exit status. Never raises
    RigError: a failure of the rig, its input or the kernel lands in `report.errors`. A
    signal (rig.signals.Interrupted) is re-raised once the rig is down and the report, which
    says so, is written."""
    opts.out.mkdir(parents=True, exist_ok=True)
    report = Report(versions={"rig": __version__})
    report.fault = {"kind": opts.fault}
    t_start = time.monotonic()
    evidence = Evidence()
    interrupted: Interrupted | None = None
    try:
        inputs = evidence.inputs = load_inputs(opts, report)
        config = RigConfig(
            log_dir=opts.out,
            kernel=opts.kernel,
            userspace=opts.userspace,
            qemu=opts.qemu,
            qemu_version=opts.qemu_version,
            clock=opts.clock,
            msi_x=opts.msi_x,
            mlx4_en=opts.mlx4_en,
            netdev_up=opts.netdev_up,
            boot=opts.boot,
        )
        with Rig(config) as rig:
            report.versions.update(
                qemu=rig.qemu_version, kernel=rig.kernel_release, kernel_origin=rig.kernel_origin
            )
            report.clock = rig.clock
            report.boot = rig.boot
            report.timings.update(provision=rig.timings.provision, boot=rig.timings.boot)
            _replay(rig, opts, inputs, report, evidence)
    except RigError as e:
        report.errors.append(str(e))
        report.exit_status = e.exit_status
    except Interrupted as e:
        interrupted = e
        report.errors.append(f"{e} during: {step_cut_short() or 'the start'}")
        report.exit_status = e.exit_status
    report.timings["total"] = time.monotonic() - t_start
    if evidence.pairs and evidence.inputs is not None:
        cells = crmap.crspace_map(evidence.pairs, evidence.inputs.crspace.covered, cr.SIZE)
        report.crspace_map = crmap.summary(cells)
    else:
        cells = []
    report.artifacts = {
        p.name: p.name
        for p in sorted(opts.out.iterdir())
        if p.is_file() and p.name not in ("report.json", reporthtml.NAME)
    }
    report.ok = (
        not report.errors
        and bool(report.snapshots)
        and all(
            s.agree and all(c["register"] for c in s.changed_from_input) for s in report.snapshots
        )
        and all(r.ok for r in report.readers)
    )
    if report.ok:
        report.exit_status = 0
    elif not report.errors:
        report.exit_status = 1  # the rig worked: a snapshot or a reader is wrong
    report.write(opts.out)
    reporthtml.write(
        opts.out,
        report,
        reporthtml.Drawn(
            cells=cells,
            capture=evidence.capture,
            health=evidence.health,
            input_health=evidence.inputs.health.data if evidence.inputs else None,
        ),
    )
    if interrupted is not None:
        raise Interrupted(interrupted.signum, f"report: {opts.out / 'report.json'}")
    return report


def _replay(
    rig: Rig, opts: ReplayOptions, inputs: Inputs, report: Report, evidence: Evidence
) -> None:
    rig.device.load_crspace(inputs.crspace.data)
    rig.device.set_health(inputs.health.data)
    rig.mlx4.enable_snapshots()
    with step("reading CR-space live with mstregdump in the guest"):
        live = take_mstregdump(rig)
    (opts.out / LIVE_DUMP).write_text(live.text)
    mst_row, mst_pair = check_mstregdump(live)
    report.readers.append(mst_row)  # the snapshots' readers go before it, once they read
    if mst_pair is not None:
        evidence.pairs.append(mst_pair)
    report.timings["mstregdump"] = live.seconds
    if opts.fault == "catas":
        report.fault["catas_words"] = [f"{w:#010x}" for w in opts.catas_words]
    else:
        report.fault["trigger"] = "devlink dev reload"
    events_from = rig.device.state()["events"]
    console_from = len(rig.console.lines())
    t_before = time.monotonic()
    cycle: FaultCycle | None = None
    try:
        cycle = _take_fault(rig, opts, report)
    finally:  # what happened, as far as it went: also when the driver failed
        _record_story(rig, report, cycle, events_from, console_from, t_before)
    snap_id = cycle.snapshot_id()
    assert cycle.truth is not None  # fault() checked it
    evidence.capture, evidence.health = cycle.truth.image, cycle.truth.health
    evidence.pairs.append(
        Pair(
            "input vs device capture",
            "input",
            "capture",
            inputs.crspace.data,
            cycle.truth.image,
            registers_explain=True,
        )
    )
    t_snap = cycle.arrivals[-1]
    report.timings["fault_to_snapshots"] = t_snap - cycle.t_fault
    report.timings["detection"] = cycle.truth.t - cycle.t_fault
    report.timings["crdump_and_snapshot"] = t_snap - cycle.truth.t
    report.timings["reset_and_reprobe"] = cycle.t_recovered - t_snap
    report.netdevs = {
        "before": [n.as_dict() for n in cycle.netdevs_before],
        "after": [n.as_dict() for n in cycle.netdevs_after],
    }

    with step("reading the snapshots over SSH (devlink) and netlink (pyroute2)"):
        t0 = time.monotonic()
        read: dict[str, dict[str, bytes]] = {}
        for region in REGIONS:
            snap, read[region] = _check(rig, region, snap_id, cycle, inputs, opts.out)
            report.snapshots.append(snap)
        report.timings["read_and_compare"] = time.monotonic() - t0
    rows = [(s.region, s.id, s.size, s.comparisons) for s in report.snapshots]
    for i, (name, key) in enumerate((("devlink CLI", "cli"), ("pyroute2 netlink", "netlink"))):
        report.readers.insert(i, snapshot_reader(name, key, rows))
        evidence.pairs.append(
            Pair(
                f"device capture vs {name}",
                "capture",
                name,
                cycle.truth.image,
                read["cr-space"][key],
                registers_explain=False,
            )
        )
    if report.traffic and not report.traffic["ok"]:  # after the snapshots: the report has both
        raise KernelFailure(f"TCP across the {opts.fault} fault: {report.traffic['problem']}")


def _take_fault(rig: Rig, opts: ReplayOptions, report: Report) -> FaultCycle:
    if opts.traffic:
        with (
            Traffic(rig) as traffic,
            step(
                f"injecting fault {opts.fault} under a {opts.traffic_bytes}-byte TCP transfer, "
                "waiting for the snapshots, the recovery and the transfer"
            ),
        ):
            run = fault_under_traffic(
                rig,
                traffic,
                opts.traffic_bytes,
                opts.fault,
                words=opts.catas_words,
            )
        cycle = run.cycle
        report.traffic = run.as_dict()
        g = run.gap
        logger.info(
            f"traffic: {run.result.received.bytes} bytes received, "
            f"{'hashes match' if report.traffic['sha256_match'] else 'HASHES DIFFER'}; longest "
            f"stall {g.s:.1f} s at byte {g.at_byte} (from the injection: last byte "
            f"{g.last_byte_s:+.1f} s, recovered {g.recovered_s:+.1f} s, first byte "
            f"{g.first_byte_s:+.1f} s)"
        )
    else:
        with step(f"injecting fault {opts.fault}, waiting for the driver's snapshots and recovery"):
            cycle = rig.mlx4.fault(opts.fault, words=opts.catas_words)
    return cycle


def _record_story(
    rig: Rig,
    report: Report,
    cycle: FaultCycle | None,
    events_from: int,
    console_from: int,
    t_before: float,
) -> None:
    """The fault's timeline and the catas words the driver printed, into the report. Best
    effort: it runs when the fault went wrong too, and must not hide why."""
    try:
        events = rig.device.events(events_from).events
        console = rig.console.lines()[console_from:]
    except (RigError, OSError) as e:
        logger.info(f"no timeline: {e}")
        return
    if cycle is not None:
        t_fault = cycle.t_fault
    else:  # the injection as the device logged it, if it got that far
        injected = [e["t"] for e in events if e.get("kind") == "fault"]
        t_fault = float(injected[0]) if injected else t_before
    notes = list(zip(cycle.arrivals, cycle.events, strict=False)) if cycle else []
    reload = cycle.t_recovered if cycle and cycle.trigger == "devlink dev reload" else None
    marks = fault_marks(t_fault, events, console, notes, reload, warped=rig.clock == WARP)
    report.timeline = [m.as_dict() for m in marks]
    printed = [m.groups() for _, line in console if (m := CATAS_PRINTED.search(line))]
    if printed:
        report.fault["catas_printed"] = [f"0x{word}" for _, word in printed]


def _check(
    rig: Rig, region: str, snap_id: int, cycle: FaultCycle, inputs: Inputs, out: Path
) -> tuple[SnapshotReport, dict[str, bytes]]:
    """The snapshot's report, and what each channel read ("cli", "netlink")."""
    handle = rig.region(region)
    cli = rig.devlink.dump(handle, snap_id)
    nl = rig.netlink.read(handle, snap_id)
    expected = cycle.expected(region)
    name = f"{region}-{snap_id}"
    (out / f"{name}.bin").write_bytes(cli)
    if nl != cli:
        (out / f"{name}.netlink.bin").write_bytes(nl)
    (out / f"{name}.truth.bin").write_bytes(expected)
    # fw-health is a region of its own: its text lists every dword, from its address 0.
    addresses = inputs.mstdump_addresses if region == "cr-space" else range(0, len(cli), 4)
    within = [a for a in addresses if a + 4 <= len(cli)]  # a short snapshot: what it holds
    (out / f"{name}.mstdump").write_text(format_mstdump(cli, within))
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
        logger.info(f"{handle} snapshot {snap_id}: MISMATCH, see {out / diff_path}")
    covered = None
    if region == "cr-space":
        runs = explain(inputs.crspace.data, expected)
        changes = [c.as_dict() for c in runs]
        covered = coverage(inputs.crspace.covered, len(expected), runs)
    else:
        changes = _health_changes(inputs.health.data, expected)
    snapshot = SnapshotReport(
        region=region,
        id=snap_id,
        size=len(cli),
        sha256=sha256(cli),
        path=f"{name}.bin",
        agree=not diffs,
        comparisons=comparisons,
        changed_from_input=changes,
        diff_path=diff_path,
        mstdump_path=f"{name}.mstdump",
        coverage=covered.as_dict() if covered else None,
    )
    return snapshot, {"cli": cli, "netlink": nl}


def _health_changes(given: bytes, truth: bytes) -> list[dict[str, object]]:
    """Where the device's health buffer differs from the input: it has no live words (the
    driver reads it as loaded), so any difference is UNEXPLAINED."""
    d = diff(given, truth)
    if d.equal:
        return []
    return [
        {"offset": d.first_offsets[0], "length": d.count, "register": None, "why": "UNEXPLAINED"}
    ]
