"""The driver behaviours `rig validate` checks on each kernel, and how each one is judged.

Two boots per kernel: `rig replay` (catas fault, snapshots read over CLI and netlink and
compared with the device's truth) and one session for the rest, in order: probe, regions,
a first fault and the recovery, a second fault, snapshot deletion, reload, the kernel log.
A step whose prerequisite did not pass is reported as an error ("not run"), not a failure.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rig import builtin
from rig.errors import KernelFailure, RigError
from rig.formats.compare import diff
from rig.formats.report import Report
from rig.kernellog import kernel_trouble
from rig.mlx4 import REGION_SIZES, REGIONS, FaultCycle
from rig.rig import Rig, RigConfig

logger = logging.getLogger(__name__)

PASS, FAIL, ERROR = "pass", "fail", "error"


@dataclass(frozen=True)
class Behaviour:
    name: str
    summary: str


BEHAVIOURS = (
    Behaviour("probe", "mlx4_core binds the emulated ConnectX-3 and registers with devlink"),
    Behaviour("regions", "exactly cr-space (BAR0 size) and fw-health (64 bytes), no snapshots"),
    Behaviour(
        "catas-snapshots",
        "a catas fault gives one snapshot per region, same id, equal "
        "to the device truth over CLI and netlink (rig replay)",
    ),
    Behaviour("recovery", "after a fault the driver resets the device and probes again"),
    Behaviour(
        "second-fault",
        "a second fault: a new id in both regions, contents equal to the "
        "truth, the first snapshots kept",
    ),
    Behaviour("snapshot-delete", "region del removes exactly that snapshot of that region"),
    Behaviour("reload", "devlink dev reload succeeds and both regions come back"),
    Behaviour("kernel-log", "no WARNING, BUG or Oops in the kernel log"),
)
NAMES = tuple(b.name for b in BEHAVIOURS)


@dataclass
class Outcome:
    status: str  # PASS | FAIL | ERROR
    detail: str = ""
    # Facts that should not change between runs of the same kernel: a difference between
    # the two kernels with the same status is reported as "changed".
    observed: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


# --- from a replay report -------------------------------------------------------------------


def replay_outcome(report: Report, out: Path) -> Outcome:
    """catas-snapshots, judged from `rig replay`'s report (written to `out`)."""
    problems = list(report.errors)
    observed: dict[str, Any] = {}
    by_region = {s.region: s for s in report.snapshots}
    for region in REGIONS:
        snap = by_region.get(region)
        if snap is None:
            if not report.errors:
                problems.append(f"no {region} snapshot")
            continue
        observed[region] = {"id": snap.id, "size": snap.size, "agree": snap.agree}
        differing = [c for c in snap.comparisons if not c.equal]
        see = f" (see {out / snap.diff_path})" if snap.diff_path else ""
        if [(c.a, c.b) for c in differing] == [("truth", "cli"), ("truth", "netlink")]:
            d = differing[0]
            # The usual way a driver bug shows: both readers see the same wrong bytes.
            where = _where(d.differing_bytes, d.first_offsets)
            problems.append(
                f"{region} snapshot {snap.id} differs from the device truth "
                f"{where} (CLI and netlink agree){see}"
            )
        else:
            problems += [
                f"{region} snapshot {snap.id}: {c.a} and {c.b} differ "
                f"{_where(c.differing_bytes, c.first_offsets)}{see}"
                for c in differing
            ]
        unexplained = [c for c in snap.changed_from_input if not c.get("register")]
        if unexplained:
            problems.append(
                f"{region}: device truth differs from the input where no register explains it"
            )
    if len({s.id for s in report.snapshots}) > 1:
        problems.append(
            "the regions' snapshots have different ids: "
            + ", ".join(f"{s.region} {s.id}" for s in report.snapshots)
        )
    status = PASS if report.ok and not problems else FAIL
    detail = (
        "; ".join(problems)
        if problems
        else (
            f"both regions snapshotted with id {report.snapshots[0].id}, CLI/netlink/truth agree"
            if report.snapshots
            else ""
        )
    )
    return Outcome(status, detail, observed, report.timings.get("total", 0.0))


def _where(count: int, offsets: list[int]) -> str:
    start = f" from offset {offsets[0]:#x}" if offsets else ""
    return f"in {count} byte{'s' if count != 1 else ''}{start}"


# --- one session for the rest ---------------------------------------------------------------


class BehaviourRun:
    """Runs the session behaviours on one booted rig, recording an Outcome for each."""

    def __init__(self, rig: Rig) -> None:
        self.rig = rig
        self.outcomes: dict[str, Outcome] = {}
        self.faults: list[FaultCycle] = []

    def run(self, name: str, check: Callable[[], Outcome], *requires: str) -> None:
        missing = [r for r in requires if self.outcomes.get(r, Outcome(ERROR)).status != PASS]
        if missing:
            self.outcomes[name] = Outcome(ERROR, f"not run: {', '.join(missing)} did not pass")
            return
        t0 = time.monotonic()
        try:
            outcome = check()
        except KernelFailure as e:
            outcome = Outcome(FAIL, str(e))
        except RigError as e:
            # The driver's or the guest's failure shows up as a failed guest command: the
            # behaviour did not happen, whatever the cause.
            outcome = Outcome(FAIL, str(e).splitlines()[0])
        outcome.seconds = time.monotonic() - t0
        self.outcomes[name] = outcome
        logger.info(f"  {name}: {outcome.status}{': ' + outcome.detail if outcome.detail else ''}")

    # -- the checks --

    def regions(self) -> Outcome:
        found = self.rig.mlx4.regions()
        observed = {
            name: {"size": r.size, "max": r.max_snapshots, "snapshots": r.snapshots}
            for name, r in sorted(found.items())
        }
        problems = []
        if sorted(found) != sorted(REGIONS):
            problems.append(f"regions {sorted(found)}, expected {sorted(REGIONS)}")
        for name, size in REGION_SIZES.items():
            if name in found and found[name].size != size:
                problems.append(f"{name} is {found[name].size} bytes, expected {size}")
            if name in found and found[name].snapshots:
                problems.append(f"{name} starts with snapshots {found[name].snapshots}")
        if problems:
            return Outcome(FAIL, "; ".join(problems), observed)
        return Outcome(
            PASS,
            ", ".join(f"{n} {found[n].size} B (max {found[n].max_snapshots})" for n in REGIONS),
            observed,
        )

    def fault(self) -> Outcome:
        """Inject a catas fault, collect its notifications, wait for the recovery."""
        rig = self.rig
        if not self.faults:
            # rig replay's inputs: every CR-space dword and health word distinct, so that a
            # snapshot read from the wrong place cannot match by accident.
            rig.device.load_crspace(builtin.crspace_image())
            rig.device.set_health(builtin.health_buffer())
            rig.mlx4.enable_snapshots()
        # Not strict: a fault without snapshots is judged by second-fault, not here.
        cycle = rig.mlx4.fault("catas", strict=False)
        if cycle.missing:
            logger.info(f"  fault {len(self.faults) + 1}: {cycle.missing}")
        self.faults.append(cycle)
        return Outcome(PASS, f"recovered ({cycle.recovery})", {"recovered": True})

    def second_fault(self) -> Outcome:
        first = self.faults[0]
        self.fault()
        second = self.faults[1]
        problems = []
        if sorted(first.ids) != sorted(REGIONS):
            problems.append(f"the first fault notified snapshots only for {sorted(first.ids)}")
        if sorted(second.ids) != sorted(REGIONS):
            raise KernelFailure(
                f"the second fault notified snapshots only for {sorted(second.ids)}"
            )
        if len(set(second.ids.values())) != 1:
            problems.append(f"the second fault's snapshot ids differ: {second.ids}")
        if set(second.ids.values()) & set(first.ids.values()):
            problems.append(f"the second fault reused an id: {first.ids} then {second.ids}")
        if second.truth is None:
            raise KernelFailure("the device saw no crdump for the second fault")
        contents = {}
        for region in REGIONS:
            handle = self.rig.region(region)
            listed = self.rig.devlink.region(handle).snapshots
            for fault_no, fault in enumerate((first, second), 1):
                if region in fault.ids and fault.ids[region] not in listed:
                    problems.append(
                        f"{region} no longer lists snapshot {fault.ids[region]} of fault {fault_no}"
                    )
            # Over netlink: the replay already holds the CLI to the truth, and iproute2's
            # JSON of 1 MiB costs the guest ~1.4 s of CPU under TCG. The rig's own agent:
            # a new one (rig.channel) starts Python and pyroute2 in the guest, ~2 s each.
            data = self.rig.netlink.read(handle, second.ids[region])
            truth = second.expected(region)
            d = diff(truth, data)
            contents[region] = d.equal
            if not d.equal:
                problems.append(
                    f"{region} snapshot {second.ids[region]} differs from the "
                    f"device truth {_where(d.count, d.first_offsets)}"
                )
        observed = {"ids": [first.ids, second.ids], "contents_match": contents}
        if problems:
            return Outcome(FAIL, "; ".join(problems), observed)
        return Outcome(
            PASS,
            f"ids {first.ids['cr-space']} then {second.ids['cr-space']}, contents equal the truth",
            observed,
        )

    def snapshot_delete(self) -> Outcome:
        first = self.faults[0].ids
        devlink = self.rig.devlink
        keep_region, del_region = REGIONS[1], REGIONS[0]
        if del_region not in first:
            return Outcome(ERROR, f"not run: the first fault made no {del_region} snapshot")
        before = {r: devlink.region(self.rig.region(r)).snapshots for r in REGIONS}
        victim = first[del_region]
        devlink.delete(self.rig.region(del_region), victim)
        after = {r: devlink.region(self.rig.region(r)).snapshots for r in REGIONS}
        problems = []
        expected = [s for s in before[del_region] if s != victim]
        if after[del_region] != expected:
            problems.append(
                f"{del_region} lists {after[del_region]} after deleting {victim} "
                f"from {before[del_region]}"
            )
        if after[keep_region] != before[keep_region]:
            problems.append(
                f"deleting from {del_region} changed {keep_region}: "
                f"{before[keep_region]} -> {after[keep_region]}"
            )
        observed = {"before": before, "after": after}
        if problems:
            return Outcome(FAIL, "; ".join(problems), observed)
        return Outcome(
            PASS,
            f"{del_region} {before[del_region]} -> {after[del_region]}, {keep_region} unchanged",
            observed,
        )

    def reload(self) -> Outcome:
        rig = self.rig
        rig.mlx4.reload()
        found = {name: r.size for name, r in rig.mlx4.regions().items()}
        if found != REGION_SIZES:
            raise KernelFailure(f"after reload the regions are {found}, expected {REGION_SIZES}")
        return Outcome(PASS, "reloaded; both regions present", {"regions": found})

    def kernel_log(self) -> Outcome:
        trouble = kernel_trouble(self.rig.dmesg())
        if trouble:
            return Outcome(
                FAIL, f"{len(trouble)} line(s), first: {trouble[0].strip()}", {"clean": False}
            )
        return Outcome(PASS, "clean", {"clean": True})


def run_session(
    kernel: str | None,
    qemu: Path | None,
    out: Path,
    userspace: str | None = None,
    qemu_version: str | None = None,
) -> dict[str, Outcome]:
    """Boot `kernel` once and check every behaviour but catas-snapshots (see run_replay)."""
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    rig = Rig(
        RigConfig(
            log_dir=out,
            kernel=kernel,
            userspace=userspace,
            qemu=qemu,
            qemu_version=qemu_version,
            name="validate",
        )
    )
    try:
        rig.start()
    except RigError as e:
        # No driver, no devlink, no boot: nothing after the probe can be judged.
        outcomes = {
            "probe": Outcome(FAIL, str(e).splitlines()[0], {"bound": False}, time.monotonic() - t0)
        }
        for name in NAMES:
            if name not in ("probe", "catas-snapshots"):
                outcomes[name] = Outcome(ERROR, "not run: probe did not pass")
        return outcomes
    try:
        s = BehaviourRun(rig)
        s.outcomes["probe"] = Outcome(
            PASS, f"bound as {rig.dev_handle}", {"bound": True}, time.monotonic() - t0
        )
        logger.info(f"  probe: pass: bound as {rig.dev_handle}")
        s.run("regions", s.regions, "probe")
        s.run("recovery", s.fault, "probe")
        s.run("second-fault", s.second_fault, "recovery")
        s.run("snapshot-delete", s.snapshot_delete, "recovery")
        s.run("reload", s.reload, "probe")
        s.run("kernel-log", s.kernel_log)
        return s.outcomes
    finally:
        rig.stop()
