"""`rig bench`'s pure parts: statistics, the table, the JSON document, the catas timeline."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from cx3 import crspace, layout
from guest.programs import bench_guest
from rig.bench import run as bench
from rig.bench.stats import (
    SCHEMA,
    Figure,
    Results,
    Spec,
    document,
    fmt,
    format_table,
    ratios,
    summarize,
    to_json,
)
from rig.bench.timeline import catas_timeline
from rig.cli import build_parser
from rig.timeline import TimelineError, clock_offset, printk_lines
from rig.vm import clock as vmclock

# --- statistics ---------------------------------------------------------------------------


def test_summary_is_median_min_max() -> None:
    s = summarize([3.0, 1.0, 2.0])
    assert (s.n, s.median, s.min, s.max) == (3, 2.0, 1.0, 3.0)
    assert summarize([1.0, 2.0, 4.0, 10.0]).median == 3.0  # even: mean of the middle two
    with pytest.raises(ValueError):
        summarize([])


def test_goal_is_met_by_the_median() -> None:
    fig = Figure(Spec("k", "label", "s", goal=8.0), [7.0, 9.5, 7.5])
    assert fig.met is True  # one run above the goal does not fail it
    fig.samples.append(9.0)
    fig.samples.append(9.0)
    assert fig.met is False
    assert Figure(Spec("k", "label", "s", goal=8.0)).met is None  # nothing measured
    assert Figure(Spec("k", "label", "s"), [100.0]).met is None  # no goal
    assert Figure(Spec("k", "label", "s", goal=1.0), [1.0]).met is True  # "<=" goal


def test_a_floor_goal_is_met_at_or_above_it_and_reads_as_such() -> None:
    floor = Spec("k", "card / veth", "x", goal_min=0.5)
    assert Figure(floor, [0.4, 0.6, 0.5]).met is True
    assert Figure(floor, [0.4, 0.45, 0.6]).met is False
    assert Figure(floor, [0.5]).as_dict()["goal"] == {"min": 0.5}
    assert ">= 0.500x" in format_table([Figure(floor, [0.4])])


def test_ratios_pair_runs_and_skip_zero() -> None:
    assert ratios([4.0, 9.0, 5.0], [2.0, 3.0]) == [2.0, 3.0]
    assert ratios([1.0, 2.0], [0.0, 4.0]) == [0.5]


def test_results_keep_spec_order_and_reject_duplicates() -> None:
    r = Results([Spec("b", "B", "s"), Spec("a", "A", "s", goal=1.0)])
    r.add("a", 2)
    r.add("b", 1)
    assert [f.spec.key for f in r.measured()] == ["b", "a"]
    assert [f.spec.key for f in r.missed()] == ["a"]
    with pytest.raises(KeyError):
        r.add("nope", 1)
    with pytest.raises(ValueError, match="duplicate"):
        Results([Spec("a", "A", "s"), Spec("a", "A again", "s")])


def test_the_bench_specs_are_unique_and_cover_every_goal_of_the_issue() -> None:
    results = Results(bench.SPECS)
    goals = {k: f.spec.goal for k, f in results.figures.items() if f.spec.goal is not None}
    assert goals == {
        "boot.device": 8.0,
        "catas.fault_to_snapshots": 7.0,
        "catas.crdump_loop": 1.0,
        "guest.bar_loop": 1.0,
        "rtt.model_vs_c": 2.0,
        "suite.full": 600.0,
        "suite.e2e-warp": 100.0,  # issue 16: the e2e suite on the rig's defaults
        "boot.en_cost": 1.0,
        "en.reset_cost": 1.0,
        "boot.saved": 2.5,  # issue 16: boot to ready with device and driver, saved VM
        "boot.saved_warp": 2.5,
        "clock.warp.fault_to_snapshots": 0.5,
        "clock.warp.reset_and_reprobe": 0.5,
        "clock.saved_warp.replay": 8.0,
        "clock.saved_warp.fault_to_snapshots": 0.5,
        "clock.saved_warp.reset_and_reprobe": 0.5,
    }
    floors = {k: f.spec.goal_min for k, f in results.figures.items() if f.spec.goal_min}
    assert floors == {"traffic.card_vs_veth": 0.5}
    assert {s.unit for s in bench.SPECS} <= {"s", "ms", "us", "ns", "x", "%", "MB/s"}


# --- table ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (1234.5, "1234"),
        (12.345, "12.3"),
        (7.5, "7.50"),
        (0.01234, "0.012"),
        (-6.7, "-6.70"),
    ],
)
def test_fmt(value: float, text: str) -> None:
    assert fmt(value) == text


def _results() -> Results:
    r = Results(
        [
            Spec("boot", "boot to SSH-ready", "s", goal=8.0),
            Spec("boot.kernel", "  kernel", "s"),
            Spec("ratio", "host / C", "x", goal=2.0),
            Spec("never", "not measured", "s"),
        ]
    )
    for v in (7.5, 7.4, 7.8):
        r.add("boot", v)
    r.add("boot.kernel", 4.9)
    for v in (3.1, 3.3):
        r.add("ratio", v)
    return r


def test_table_rows_units_and_verdicts() -> None:
    lines = format_table(_results().measured()).splitlines()
    assert lines[0].split() == ["figure", "median", "min", "max", "n", "goal"]
    assert set(lines[1]) == {"-"}
    boot, kernel, ratio = lines[2:]
    assert "7.50 s" in boot and "7.40 s" in boot and "7.80 s" in boot
    assert boot.endswith("<= 8.00 s  ok")
    assert kernel.startswith("  kernel") and kernel.rstrip().endswith("1")
    assert "3.20x" in ratio and ratio.endswith("MISSED")
    assert "not measured" not in "\n".join(lines)
    # Numbers are right-aligned in their columns.
    assert lines[2].index("7.50 s") + len("7.50 s") == lines[3].index("4.90 s") + len("4.90 s")


# --- JSON -----------------------------------------------------------------------------------


def test_json_document_shape() -> None:
    results = _results()
    results.error("guest", "RigError: no snapshot")
    machine: dict[str, Any] = {"cores": 2, "cpu_model": "AMD EPYC", "qemu": "10.2.2"}
    doc = json.loads(to_json(document(results, machine, {"runs": 3}, 123.4)))
    assert doc["schema"] == SCHEMA
    assert doc["machine"] == machine and doc["options"] == {"runs": 3}
    assert doc["duration_s"] == 123.4
    assert [f["key"] for f in doc["figures"]] == ["boot", "boot.kernel", "ratio"]
    boot = doc["figures"][0]
    assert boot == {
        "key": "boot",
        "label": "boot to SSH-ready",
        "unit": "s",
        "n": 3,
        "median": 7.5,
        "min": 7.4,
        "max": 7.8,
        "samples": [7.5, 7.4, 7.8],
        "goal": {"max": 8.0},
        "met": True,
        "note": "",
    }
    assert doc["figures"][1]["goal"] is None and doc["figures"][1]["met"] is None
    assert doc["missed_goals"] == ["ratio"]
    assert doc["errors"] == [{"section": "guest", "error": "RigError: no snapshot"}]


def test_the_options_say_what_warp_meant(monkeypatch: pytest.MonkeyPatch) -> None:
    opts = bench.BenchOptions(Path("/x.json"), Path("/logs"))
    monkeypatch.delenv("RIG_WARP_SHIFT", raising=False)
    monkeypatch.delenv("RIG_WARP_RATIO", raising=False)
    warp = f"shift={vmclock.SHIFT},sleep=on,x-sleep-ratio={vmclock.RATIO}"
    assert warp in bench._options(opts)["warp"]
    monkeypatch.setenv("RIG_WARP_SHIFT", "0")
    assert "shift=0," in bench._options(opts)["warp"]


# --- catas timeline -------------------------------------------------------------------------

OFFSET = 1000.0  # host time - guest time


def _fault(delays: tuple[float, ...] = (0.004, 0.001, 0.010)) -> dict[str, Any]:
    """One fault's logs; console line i arrives delays[i % len(delays)] after its printk."""
    dev = "mlx4_core 0000:00:03.0"
    printk = [
        (10.00, f"{dev}: Internal error detected:"),
        (10.001, f"{dev}:   buf[00]: 0fffffff"),
        (10.02, f"{dev}: device is going to be reset"),
        (10.52, f"{dev}: crdump: added snapshot 0 to devlink region cr-space"),
        (10.53, f"{dev}: crdump: added snapshot 0 to devlink region fw-health"),
        (13.70, f"{dev}: mlx4_restart_one was ended, ret=0"),
    ]
    console = [
        (g + OFFSET + delays[i % len(delays)], f"[{g:12.6f}] {text}")
        for i, (g, text) in enumerate(printk)
    ]
    events = [
        {"index": 5, "t": 1007.5, "kind": "fault", "fault": "catas"},
        {"index": 6, "t": 1010.021, "kind": "cr_filter", "value": 0},
        {"index": 7, "t": 1010.022, "kind": "crdump", "crdump": 0},
        {"index": 8, "t": 1010.54, "kind": "reset", "source": "bar0"},
    ]
    return {
        "events": events,
        "console": [(0.5, "rig-guest: noise"), *console],
        "notifications": [1010.545, 1010.55],
    }


def test_timeline_phases_on_one_clock() -> None:
    f = _fault()
    tl = catas_timeline(f["events"], f["console"], f["notifications"])
    assert tl.clock_offset == pytest.approx(OFFSET + 0.001)  # the least-delayed line
    assert tl.detection == pytest.approx(10.001 - 7.5)
    assert tl.error_report == pytest.approx(0.021)
    assert tl.crdump_loop == pytest.approx(10.521 - 10.022)
    assert tl.snapshot_creation == pytest.approx(0.01)
    assert tl.notification == pytest.approx(1010.55 - 1010.531)
    assert tl.fault_to_snapshots == pytest.approx(1010.55 - 1007.5)
    assert tl.reset_and_reprobe == pytest.approx(13.70 - 10.53)
    parts = tl.detection + tl.error_report + tl.crdump_loop + tl.snapshot_creation
    assert parts + tl.notification == pytest.approx(tl.fault_to_snapshots)


def test_a_late_console_burst_does_not_skew_the_phases() -> None:
    early = catas_timeline(**_fault())
    late = catas_timeline(**_fault(delays=(0.4, 0.001, 0.3)))
    assert late.crdump_loop == pytest.approx(early.crdump_loop)


def test_timeline_without_restart_or_markers() -> None:
    f = _fault()
    before_restart = [c for c in f["console"] if "restart" not in c[1]]
    assert catas_timeline(f["events"], before_restart, f["notifications"]).reset_and_reprobe is None
    no_crdump = [e for e in f["events"] if e["kind"] != "crdump"]
    with pytest.raises(TimelineError, match="crdump start"):
        catas_timeline(no_crdump, f["console"], f["notifications"])
    no_health = [c for c in f["console"] if "fw-health" not in c[1]]
    with pytest.raises(TimelineError, match="fw-health"):
        catas_timeline(f["events"], no_health, f["notifications"])
    with pytest.raises(TimelineError, match="REGION_NEW"):
        catas_timeline(f["events"], f["console"], [])
    with pytest.raises(TimelineError, match="no kernel messages"):
        clock_offset(printk_lines([(1.0, "rig-guest: ready")]))


# --- the guest script and the CLI -----------------------------------------------------------


def test_guest_readloop_maps_what_the_device_maps() -> None:
    dwords = bench_guest.mapped_ranges(list(layout.TRAPPED_PAGES))
    assert [(a * 4, (b - a) * 4) for a, b in dwords] == crspace.mmap_areas()


def test_cli_registers_bench() -> None:
    args = build_parser().parse_args(["bench", "--runs", "5", "--only", "host", "--no-suite"])
    assert (args.runs, args.only, args.suite, args.cold, args.intx) == (
        5,
        ["host"],
        False,
        False,
        True,
    )
    assert build_parser().parse_args(["bench"]).suite  # the suite is timed by default
    with pytest.raises(SystemExit):
        build_parser().parse_args(["bench", "--only", "nonsense"])


def test_the_clock_section_alternates_clocks_and_pairs_each_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """warp, real, warp from a saved VM, twice (after one saved replay that saves the VM):
    each warp/real pair's ratio, from the replays' own wall times."""
    order: list[tuple[str | None, str | None]] = []
    # saving, then warp, real, saved warp, warp, real, saved warp
    walls = iter([30.0, 4.0, 8.0, 3.0, 6.0, 24.0, 2.0])
    now = [0.0]

    def start(opts: bench.BenchOptions, out: Path) -> None:
        order.append((opts.clock, opts.boot))
        now[0] += next(walls)

    def finish(proc: None, out: Path) -> dict[str, object]:
        return {"timings": {"fault_to_snapshots": 0.3, "reset_and_reprobe": 0.4}}

    monkeypatch.setattr(bench, "_start_replay", start)
    monkeypatch.setattr(bench, "_finish_replay", finish)
    monkeypatch.setattr("rig.bench.run.time", SimpleNamespace(monotonic=lambda: now[0]))
    opts = bench.BenchOptions(json_path=tmp_path / "b.json", log_dir=tmp_path, runs=2)
    run = bench.BenchRun(Results(bench.SPECS), {}, {})
    bench._clock(opts, run)
    figures = run.results.figures
    turn = [("warp", "fresh"), ("real", "fresh"), ("warp", "saved")]
    assert order == [("warp", "saved"), *turn, *turn]
    assert figures["clock.warp.replay"].samples == [4.0, 6.0]
    assert figures["clock.saved_warp.replay"].samples == [3.0, 2.0]
    assert figures["clock.real.replay"].samples == [8.0, 24.0]
    assert figures["clock.warp_vs_real"].samples == [0.5, 0.25]
    assert figures["clock.warp.reset_and_reprobe"].samples == [0.4, 0.4]


def test_each_passed_tox_env_gives_its_seconds() -> None:
    summary = (
        "  unit: OK (45.32=setup[0.91]+cmd[44.41] seconds)\n"
        "  e2e: OK (476.88=setup[0.80]+cmd[476.08] seconds)\n"
        "  e2e-warp: OK (121.07=setup[0.75]+cmd[120.32] seconds)\n"
        "  chaos: FAIL code 1 (125.74=setup[0.70]+cmd[125.04] seconds)\n"
        "  evaluation failed :( (948.82 seconds)\n"
    )
    assert bench.tox_env_seconds(summary) == {"unit": 45.32, "e2e": 476.88, "e2e-warp": 121.07}
