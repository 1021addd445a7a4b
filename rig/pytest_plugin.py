"""pytest plugin: an emulated ConnectX-3 under a real QEMU guest and mlx4_core, as fixtures.

Installed with the package as the `rig` pytest11 entry point, so any pytest run in an
environment with mlx4-rig installed has these options and fixtures. Nothing boots unless a
test asks for a rig fixture.

Options
-------
--rig-kernel SPEC     guest kernel, as `rig setup --kernel` takes it (default: deb:bookworm,
                      Debian's 6.1 cloud kernel)
--rig-userspace REL   the root fs's Debian release (default: the kernel's own for deb:SUITE,
                      else bookworm)
--rig-qemu PATH       the qemu-system-x86_64 to use (default: $RIG_QEMU, a new enough system
                      QEMU, or the rig's cached build of its pinned version)
--rig-qemu-version V  build and use this version of Debian's qemu source instead
--rig-boot MODE       fresh (QEMU boots the kernel) or saved (the guest resumes from a saved
                      VM, the card is hot-plugged and the driver loaded); default: $RIG_BOOT,
                      else the rig's default (rig.rig.DEFAULT_BOOT)
--rig-clock CLOCK     the guests' clock, warp or real (default: $RIG_CLOCK, else the rig's
                      default: rig/vm/clock.py, docs/clock.md)
--rig-artifacts DIR   where a failing test's evidence goes (default: test-results/artifacts)

Fixtures
--------
rig_config    (session)  `RigConfig` built from the options; the base of every rig below.
                         Each rig gets its own log directory under pytest's tmp_path_factory.
rig_session   (session)  a started `Rig` (msi_x=1) shared by every test that does not need a
                         clean device. Tests that change driver state must leave it usable
                         (or reprobe the driver themselves). Paused (Rig.pause) while tests
                         that do not ask for it run, so it costs them no host CPU.
rig           (function) the rig under test: `rig_session`, unless a module overrides the
                         `rig` fixture (e.g. with a module-scoped rig from `rig_factory`).
rig_machine   (function) `rig.machine`: the QEMU VM (SSH, QMP, console).
rig_device    (function) `rig.device`: the device model's control client (fault knobs and
                         ground truth: load_crspace, set_health, fault(knob, ...), crdumps,
                         ...).
rig_factory   (module)   `rig_factory(**overrides) -> Rig` starts a fresh rig whose config is
                         `rig_config` with `overrides` applied (msi_x=False, mlx4_params=...,
                         kernel_args=..., name=...). Every rig it started is stopped at the
                         end of the module, so a module-scoped fixture can boot once for all
                         its tests; `rig_factory.stop(rig)` ends one early (one VM at a time
                         on a small host).
devlink       (function) a `RegionChannel` on `rig`, parametrized over "cli" (iproute2's
                         devlink over SSH) and "netlink" (pyroute2 in the guest): a test that
                         takes `devlink` runs once per channel, as test_x[cli] and
                         test_x[netlink]. The API (rig.devlink.channels): regions(),
                         region(handle), read(handle, snapshot, addr, length),
                         dump(handle, snapshot), delete(handle, snapshot), new(handle,
                         snapshot=None); a snapshot of None leaves the id out of the request.
                         Failures raise `ChannelError` with `.errno` (the kernel's answer, or
                         None when the tool refused the request itself) and `.message`.

traffic       (function) a `rig.traffic.Traffic` on `rig`: port 1's netdev in namespace
                         rig-a (10.99.0.1), port 2's in rig-b (10.99.0.2), up with carrier,
                         so the only path between them is the card's cable. `ping(count)`,
                         `start_tcp(nbytes)` + `wait()` (or `tcp(nbytes)`) -> a `TcpResult`
                         with both ends' bytes, SHA-256, longest gap and `ethtool -S`
                         counters (`check()` raises KernelFailure saying where it broke),
                         `restore()` after a fault's reset (the driver re-creates the
                         netdevs in the initial namespace). At the end the netdevs go back
                         to the initial namespace, up.

Helpers: `boot_options(rig_config)` are the `rig` command-line options that boot the same
kernel, root fs, QEMU, clock and boot mode (for a test that runs `rig replay` through rig.cli);
`rig_channel(rig, "cli" | "netlink")` gives the same channel objects for any rig
(e.g. both at once, to compare them); `rig.channel(name, UNPRIVILEGED)` opens one that runs
as nobody without capabilities (close() it); `start_rig` starts a rig outside the fixtures
with the same one-line failure.

Failures
--------
If a rig cannot start (no QEMU, no kernel, provisioning or boot fails) every test that needs
it fails at setup (pytest reports an ERROR) with one line saying why (pytest.fail(...,
pytrace=False)); nothing is skipped. When a test that
used a rig fails, the plugin saves the rig's console log, a fresh dmesg, the QMP log, the
device model's log and event log, every snapshot of every region, and the device's crdump
records (ground truth) into --rig-artifacts/<test id>/<rig name>/, and names that directory in
the failure report (section "rig artifacts") and in the JUnit XML (property rig_artifacts).
"""

from __future__ import annotations

import collections
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from cx3.client import ControlClient
from rig.devlink.channels import CHANNELS, CliChannel, NetlinkChannel, RegionChannel
from rig.errors import RigError
from rig.provision.suites import RELEASES
from rig.rig import BOOT_ENV, BOOT_MODES, DEFAULT_BOOT, Rig, RigConfig
from rig.traffic import Traffic
from rig.vm.clock import CLOCKS, WARP
from rig.vm.clock import ENV as CLOCK_ENV
from rig.vm.clock import resolve as resolve_clock
from rig.vm.machine import Machine

ARTIFACTS_DEFAULT = "test-results/artifacts"
# Dumping every cr-space snapshot of a broken rig must not hold the suite up for long.
ARTIFACT_BUDGET_S = 90.0

# What one xdist worker may need at once: two 1 GiB guests with their QEMUs and device models.
WORKER_MEMORY_MIB = 3 * 1024
# The e2e suite on this repo's 2-core machine (warp, saved VMs, one run each, session 12):
# 227 s with 2 workers (35% of the CPUs idle), 185 s with 3, 168 s with 4 (3% idle).
WARP_WORKERS_PER_CORE = 2

_RIGS = pytest.StashKey[list[Rig]]()  # running rigs, for artifacts and the final cleanup
_FAILED_STARTS = pytest.StashKey[list[Rig]]()  # rigs whose start failed in this setup
_SESSION = pytest.StashKey[Rig]()  # rig_session's rig, once started


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("rig", "mlx4 rig (emulated ConnectX-3 under QEMU)")
    group.addoption(
        "--rig-kernel",
        metavar="SPEC",
        default=None,
        help="guest kernel, as `rig setup --kernel` takes it: deb:SUITE, "
        "deb:PACKAGE[=VERSION], a kernel directory or build:... (default: deb:bookworm)",
    )
    group.addoption(
        "--rig-userspace",
        metavar="RELEASE",
        default=None,
        choices=RELEASES,
        help="the Debian release of the guest's root fs (default: the kernel's own for "
        "deb:SUITE, else bookworm)",
    )
    group.addoption(
        "--rig-qemu",
        metavar="PATH",
        default=None,
        help="qemu-system-x86_64 to use (default: found or built by the rig)",
    )
    group.addoption(
        "--rig-qemu-version",
        metavar="VERSION",
        default=None,
        help="build and use this version of Debian's qemu source, not the rig's pinned one",
    )
    group.addoption(
        "--rig-boot",
        metavar="MODE",
        default=None,
        choices=BOOT_MODES,
        help=f"how each rig's guest starts: {' or '.join(BOOT_MODES)} "
        f"(default: ${BOOT_ENV}, else {DEFAULT_BOOT})",
    )
    group.addoption(
        "--rig-clock",
        metavar="CLOCK",
        default=None,
        choices=CLOCKS,
        help="the guests' clock: warp or real (default: $RIG_CLOCK, else the rig's default)",
    )
    group.addoption(
        "--rig-artifacts",
        metavar="DIR",
        default=ARTIFACTS_DEFAULT,
        help=f"where failing tests leave their evidence (default {ARTIFACTS_DEFAULT})",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_RIGS] = []
    config.stash[_FAILED_STARTS] = []
    if clock := config.getoption("rig_clock", None):
        # The `rig` commands tests run as processes boot on the same clock as the fixtures.
        os.environ[CLOCK_ENV] = clock
    if boot := config.getoption("rig_boot", None):
        os.environ[BOOT_ENV] = boot  # and so do the `rig matrix`/`validate` runs' rigs


# tryfirst: xdist's own answer (a worker per CPU) is an implementation of the same
# first-result hook, and which runs first otherwise follows the order the plugins registered
# in, which follows sys.path: with the repo on PYTHONPATH (its egg-info first) it was xdist's.
@pytest.hookimpl(optionalhook=True, tryfirst=True)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """`-n auto` (pytest-xdist): auto_workers() for this machine and the suite's clock."""
    try:
        found = re.search(r"^MemAvailable:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.M)
    except OSError:
        found = None
    try:
        warp = resolve_clock(config.getoption("rig_clock", None)) == WARP
    except RigError:
        warp = False  # the bad $RIG_CLOCK is named when the first rig starts
    cores = len(os.sched_getaffinity(0))
    return auto_workers(cores, int(found[1]) if found else None, warp)


def auto_workers(cores: int, mem_available_kib: int | None, warp: bool) -> int:
    """A worker per core, WARP_WORKERS_PER_CORE on the warped clock, as far as memory goes
    (WORKER_MEMORY_MIB each).

    Each worker boots its own VMs (one TCG vCPU each, up to two at a time in a module that
    compares rigs). A worker is not always busy: it waits for the guest's timers, for `rig`
    commands it started, for SSH; with one worker a core the e2e suite on warp left a fifth
    to a third of the CPUs idle, with two almost none. On warp the guest's time counts its
    instructions, so a busier host makes a test slower but no guest timeout fire sooner; on
    the real clock a starved guest's timeouts run on, so it keeps one worker a core."""
    wanted = cores * (WARP_WORKERS_PER_CORE if warp else 1)
    if mem_available_kib is None:
        return wanted
    return max(1, min(wanted, mem_available_kib // (WORKER_MEMORY_MIB * 1024)))


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Safety net: no QEMU or device process outlives the run, whatever failed."""
    running: list[Rig] = session.config.stash.get(_RIGS, [])
    for rig in list(running):
        _stop(session.config, rig)


# --- starting and stopping ------------------------------------------------------------------


def start_rig(config: pytest.Config, rig_config: RigConfig) -> Rig:
    """Start a rig or fail the test with one line saying why."""
    rig = Rig(rig_config)
    try:
        rig.start()
    except (RigError, OSError) as e:
        error = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    else:
        config.stash[_RIGS].append(rig)
        return rig
    # Outside the except block, so the report is this one line, not a chain of tracebacks.
    config.stash[_FAILED_STARTS].append(rig)
    pytest.fail(f"rig {rig_config.name!r} cannot start: {error}", pytrace=False)


def _stop(config: pytest.Config, rig: Rig) -> None:
    rigs = config.stash[_RIGS]
    if rig in rigs:
        rigs.remove(rig)
    rig.stop()


class RigFactory:
    """Starts fresh rigs from a base config; stop_all() ends every one it started."""

    def __init__(
        self, config: pytest.Config, base: RigConfig, log_dir: Callable[[str], Path], prefix: str
    ) -> None:
        self._config = config
        self._base = base
        self._log_dir = log_dir
        self._prefix = prefix
        self.rigs: list[Rig] = []

    def __call__(self, **overrides: Any) -> Rig:
        name = str(overrides.pop("name", f"{self._prefix}-{len(self.rigs)}"))
        rig_config = replace(self._base, name=name, log_dir=self._log_dir(name), **overrides)
        rig = start_rig(self._config, rig_config)
        self.rigs.append(rig)
        return rig

    def stop(self, rig: Rig) -> None:
        """Stop one rig early (e.g. before booting the next one on a small host)."""
        _stop(self._config, rig)

    def stop_all(self) -> None:
        for rig in self.rigs:
            _stop(self._config, rig)


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def rig_config(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> RigConfig:
    qemu = request.config.getoption("rig_qemu")
    return RigConfig(
        log_dir=tmp_path_factory.mktemp("rig-session"),
        kernel=request.config.getoption("rig_kernel"),
        userspace=request.config.getoption("rig_userspace"),
        qemu=Path(qemu) if qemu else None,
        qemu_version=request.config.getoption("rig_qemu_version"),
        clock=request.config.getoption("rig_clock"),
        msi_x=True,
        name="session",
        boot=request.config.getoption("rig_boot"),
    )


@pytest.fixture(scope="session")
def rig_session(request: pytest.FixtureRequest, rig_config: RigConfig) -> Iterator[Rig]:
    rig = start_rig(request.config, rig_config)
    request.config.stash[_SESSION] = rig
    yield rig
    _stop(request.config, rig)


@pytest.fixture
def rig(rig_session: Rig) -> Rig:
    return rig_session


@pytest.fixture
def rig_machine(rig: Rig) -> Machine:
    return rig.machine


@pytest.fixture
def rig_device(rig: Rig) -> ControlClient:
    return rig.device


@pytest.fixture(scope="module")
def rig_factory(
    request: pytest.FixtureRequest, rig_config: RigConfig, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RigFactory]:
    module = request.module.__name__.rsplit(".", 1)[-1]
    factory = RigFactory(
        request.config, rig_config, lambda name: tmp_path_factory.mktemp(f"rig-{name}"), module
    )
    yield factory
    factory.stop_all()


def boot_options(config: RigConfig) -> list[str]:
    """The `rig` command-line options that boot what `config` boots (--kernel, --userspace,
    --qemu, --qemu-version, --clock, --boot), for tests that run a command such as `rig
    replay` through rig.cli on the suite's kernel."""
    pairs = (
        ("--kernel", config.kernel),
        ("--userspace", config.userspace),
        ("--qemu", config.qemu),
        ("--qemu-version", config.qemu_version),
        ("--clock", config.clock),
        ("--boot", config.boot),
    )
    return [arg for flag, value in pairs if value is not None for arg in (flag, str(value))]


def rig_channel(rig: Rig, name: str) -> CliChannel | NetlinkChannel:
    """The rig's own devlink CLI or netlink agent behind the common channel API."""
    if name == "cli":
        return CliChannel(rig.devlink)
    if name == "netlink":
        return NetlinkChannel(rig.netlink)
    raise ValueError(f"unknown channel {name!r}; choose one of {', '.join(CHANNELS)}")


@pytest.fixture(params=CHANNELS)
def devlink(request: pytest.FixtureRequest, rig: Rig) -> RegionChannel:
    return rig_channel(rig, str(request.param))


@pytest.fixture
def traffic(rig: Rig) -> Iterator[Traffic]:
    with Traffic(rig) as t:
        yield t


# --- the command guard ----------------------------------------------------------------------
# A firmware command the model refused (BAD_OP for one it lacks, any other non-zero status)
# is a driver path the model does not cover, or a model bug: it fails the test that caused
# it, naming the command, instead of hiding in dmesg. Failures a fault knob injected (and
# the hung commands of cmd-timeout) are the test's own doing and pass.

_GUARD_FROM = pytest.StashKey[dict[int, int]]()  # id(rig) -> first device event of the test


def refused_commands(rig: Rig, since: int) -> list[str]:
    """The firmware commands the model refused since event `since`, one line each (with how
    often, when the same refusal repeats)."""
    events = rig.device.events(since).events
    refused = collections.Counter(
        f"{e['name']} ({e['opcode']:#05x}) -> status {e['status']:#04x}: {e['error']}"
        for e in events
        if e["kind"] == "cmd" and e.get("status") and not e.get("injected")
    )
    return [line if n == 1 else f"{line} (x{n})" for line, n in refused.items()]


def _guarded(config: pytest.Config) -> list[Rig]:
    return [r for r in config.stash[_RIGS] if r.config.with_device and _device_alive(r)]


def session_rig(config: pytest.Config) -> Rig | None:
    """rig_session's rig, if this process started it."""
    return config.stash.get(_SESSION, None)


def _park_session_rig(item: pytest.Item) -> None:
    """The session rig runs only for tests that ask for it: a module with rigs of its own
    (or none) would leave it idling beside them, still taking ~0.2 of a host core on warp
    (mlx4_en's statistics), so it is paused (Rig.pause) until a test wants it again."""
    rig = session_rig(item.config)
    if rig is None or rig not in item.config.stash[_RIGS] or rig.machine.failure is not None:
        return
    wanted = "rig_session" in getattr(item, "fixturenames", ())
    if wanted and rig.paused:
        rig.resume()
    elif not wanted and not rig.paused:
        rig.pause()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, Any, None]:
    _park_session_rig(item)
    item.stash[_GUARD_FROM] = {id(r): r.device.events(1 << 62).next for r in _guarded(item.config)}
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, Any, None]:
    outcome = yield
    if outcome.excinfo is not None or item.get_closest_marker("rig_command_failures"):
        return
    start = item.stash.get(_GUARD_FROM, {})
    refused = [
        f"{r.config.name}: {line}"
        for r in _guarded(item.config)
        for line in refused_commands(r, start.get(id(r), 0))
    ]
    if refused:
        outcome.force_exception(
            AssertionError(
                "the device model refused firmware commands during this test (a driver path the "
                "model does not cover?):\n  " + "\n  ".join(refused)
            )
        )


# --- evidence on failure --------------------------------------------------------------------


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if not report.failed:
        if report.when == "setup":
            item.config.stash[_FAILED_STARTS].clear()
        return
    rigs = _rigs_of(item)
    if report.when == "setup":
        failed_starts: list[Rig] = item.config.stash[_FAILED_STARTS]
        rigs.extend(failed_starts)
        failed_starts.clear()
    if not rigs:
        return
    base = Path(item.config.getoption("rig_artifacts"))
    if not base.is_absolute():
        base = item.config.rootpath / base
    dest = base / _safe_name(item.nodeid + ("" if report.when == "call" else f"-{report.when}"))
    deadline = time.monotonic() + ARTIFACT_BUDGET_S
    for r in rigs:
        collect_artifacts(r, dest / _safe_name(r.config.name), deadline)
    report.sections.append(("rig artifacts", f"{dest}\n"))
    report.user_properties.append(("rig_artifacts", str(dest)))
    item.user_properties.append(("rig_artifacts", str(dest)))  # JUnit XML reads teardown's


def _rigs_of(item: pytest.Item) -> list[Rig]:
    """The rigs a test used: its fixture values, or what they hold or started."""
    funcargs: dict[str, Any] = getattr(item, "funcargs", {})
    found: list[Rig] = []
    for value in funcargs.values():
        candidates = [value, getattr(value, "rig", None)]
        if isinstance(value, RigFactory):
            candidates += value.rigs
        for c in candidates:
            if isinstance(c, Rig) and c not in found:
                found.append(c)
    return found


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", text).strip("_")[:150] or "test"


def collect_artifacts(rig: Rig, dest: Path, deadline: float) -> None:
    """Copy everything that explains a failure; each part best effort, never raising."""
    dest.mkdir(parents=True, exist_ok=True)
    problems: list[str] = []

    def attempt(what: str, fn: Callable[[], object]) -> None:
        try:
            fn()
        except Exception as e:  # evidence gathering must never hide the real failure
            problems.append(f"{what}: {type(e).__name__}: {e}")

    def copy_logs() -> None:  # console.log, qmp.log, qemu-stderr.log, cx3-device.log, ...
        if rig.log_dir.is_dir():
            for f in rig.log_dir.iterdir():
                if f.is_file():
                    shutil.copy2(f, dest / f.name)

    attempt("logs", copy_logs)
    running = rig.is_running()
    if running:
        attempt(
            "dmesg", lambda: (dest / "dmesg.txt").write_text(rig.sh("dmesg", timeout=30).stdout)
        )
    if _device_alive(rig):
        attempt("device events", lambda: _save_device(rig, dest))
    if running:
        attempt("snapshots", lambda: problems.extend(_save_snapshots(rig, dest, deadline)))
    if problems:
        (dest / "artifact-errors.txt").write_text("\n".join(problems) + "\n")


def _device_alive(rig: Rig) -> bool:
    try:
        return rig.device_model.alive()
    except RigError:
        return False


def _save_device(rig: Rig, dest: Path) -> None:
    control = rig.device
    (dest / "device-state.json").write_text(json.dumps(control.state(), indent=1))
    with (dest / "device-events.jsonl").open("w") as f:
        for event in control.events(0).events:
            f.write(json.dumps(event) + "\n")
    for info in control.crdumps():  # the device's ground truth of each crdump
        record = control.crdump(info.index)
        (dest / f"crdump-{info.index}.bar0.bin").write_bytes(record.image)
        (dest / f"crdump-{info.index}.health.bin").write_bytes(record.health)


def _save_snapshots(rig: Rig, dest: Path, deadline: float) -> list[str]:
    """Every snapshot of every region, as iproute2 dumps it; the problems met."""
    problems: list[str] = []
    regions = rig.devlink.regions()
    (dest / "regions.json").write_text(json.dumps([r.__dict__ for r in regions], indent=1))
    for region in regions:
        for snap in region.snapshots:
            if time.monotonic() > deadline:
                return [*problems, "out of time: remaining snapshots not saved"]
            name = region.handle.rsplit("/", 1)[-1]
            try:
                (dest / f"{name}-{snap}.bin").write_bytes(rig.devlink.dump(region.handle, snap))
            except RigError as e:
                problems.append(f"{region.handle} snapshot {snap}: {e}")
    return problems
