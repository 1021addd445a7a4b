"""mlx4_core as the rig observes it: the one home of the driver-under-test's contract.

What the driver must do, and how the rig waits for it (never by sleeping): bind the emulated
ConnectX-3 and register with devlink, expose the cr-space and fw-health regions, and take a
fault through its error flow — fault, REGION_NEW for both regions with one snapshot id, the
device's capture of BAR0 at the crdump (the truth), then the reset and re-probe. `rig replay`,
`rig validate`'s behaviours, `rig bench` and the e2e tests all take faults through `fault()`.

The messages are the driver's own (drivers/net/ethernet/mellanox/mlx4/catas.c, crdump.c).
"""

from __future__ import annotations

import re
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cx3 import layout as cr
from cx3.wire import Crdump
from rig import builtin
from rig.devlink.cli import RegionInfo
from rig.errors import KernelFailure, RigError

if TYPE_CHECKING:
    from rig.devlink.agent import RegionWatch
    from rig.rig import Rig
    from rig.vm.ssh import Background

CX3_PCI_ID = "15b3:1003"
REGIONS = ("cr-space", "fw-health")
REGION_SIZES = {"cr-space": cr.SIZE, "fw-health": cr.HEALTH_SIZE}
MAX_SNAPSHOTS = 8  # MAX_NUM_OF_DUMPS_TO_STORE (crdump.c)

RESTARTED = "mlx4_restart_one was ended"  # catas.c, after the reset and re-probe
# guest/init/rig-init's netup watcher, each time one of the card's netdevs reaches operstate
# UP (carrier on, after the kernel's linkwatch).
NETDEV_UP = "rig-guest: netup: {name} state UP"
INTERNAL_ERROR = "Internal error detected"
SNAPSHOTS_DISABLED = "crdump: devlink snapshot disabled, skipping"
NO_HEALTH_BUFFER = "crdump: FW doesn't support health buffer access, skipping"

FAULTS = ("catas", "cmd-timeout", "closing-cmd")
# How long the driver may take to turn each fault into snapshots, on a busy 2-core host: the
# catas poll runs every 5 s and the crdump takes ~15 s under INTx; a command that never
# completes is given up after the driver's 60 s timeout, then the reload goes on.
SNAPSHOT_TIMEOUT = {"catas": 150.0, "cmd-timeout": 240.0, "closing-cmd": 150.0}
RECOVERY_TIMEOUT = 120.0
RELOAD_TIMEOUT = 240.0


@dataclass(frozen=True)
class Netdev:
    """One of the card's network interfaces, as sysfs shows it."""

    name: str
    mac: str
    operstate: str  # "up", "down", ...
    carrier: bool
    netns: str = ""  # the named network namespace it is in (rig.traffic's); "" the initial

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "mac": self.mac,
            "operstate": self.operstate,
            "carrier": self.carrier,
            "netns": self.netns,
        }


@dataclass(frozen=True)
class CardState:
    """The card as one guest command saw it (Mlx4._scan)."""

    bdf: str
    driver: str  # "" when none is bound
    registered: bool  # devlink knows pci/<bdf> (when asked)
    netdevs: list[Netdev] | None  # when asked
    console_at: int  # the console's length before the command ran

    @property
    def handle(self) -> str:
        return f"pci/{self.bdf}"


@dataclass
class FaultCycle:
    """One fault taken through the driver's error flow, as the rig saw it."""

    kind: str
    trigger: str  # what made the driver act: its catas poll, or `devlink dev reload`
    t_fault: float  # time.monotonic() at injection (the device's clock is the same)
    events: list[dict[str, Any]] = field(default_factory=list)  # region notifications
    arrivals: list[float] = field(default_factory=list)  # time.monotonic() of each
    truth: Crdump | None = None  # BAR0 and health buffer as the crdump read them
    recovery: str = ""  # the driver's restart line, or the reload's outcome
    t_recovered: float = 0.0
    # The driver's recovery line on the guest's CLOCK_REALTIME (a catas: its restart's
    # printk time); None for a reload, whose end is the host's t_recovered only.
    guest_recovered: float | None = None
    missing: str = ""  # why notifications are missing (strict=False)
    netdevs_before: list[Netdev] = field(default_factory=list)
    netdevs_after: list[Netdev] = field(default_factory=list)

    @property
    def ids(self) -> dict[str, int]:
        """Region -> id of its new snapshot."""
        return {e["region"]: e["snapshot"] for e in self.events if e.get("cmd") == "new"}

    def snapshot_id(self) -> int:
        """The one id both regions got; KernelFailure if the notifications say otherwise."""
        ids = self.ids
        if sorted(ids) != sorted(REGIONS) or len(set(ids.values())) != 1:
            raise KernelFailure(
                f"the {self.kind} fault's region notifications are not one new "
                f"snapshot per region with one id: {self.events}"
            )
        return next(iter(ids.values()))

    def expected(self, region: str) -> bytes:
        """What `region`'s snapshot of this fault must hold: the device's capture."""
        if self.truth is None:
            raise KernelFailure(f"the device saw no crdump for the {self.kind} fault")
        return self.truth.image if region == "cr-space" else self.truth.health


class Mlx4:
    """mlx4_core on one rig."""

    def __init__(self, rig: Rig) -> None:
        self.rig = rig

    # --- probe ---------------------------------------------------------------------------

    def pci_device(self) -> tuple[str, str]:
        """The emulated card's PCI address on the guest's bus and the driver bound to it
        ("" when none is); RigError if the guest has no such device."""
        state = self._scan()
        return state.bdf, state.driver

    def _scan(self, devlink: bool = False, netdevs: bool = False) -> CardState:
        """The card, with whether devlink knows it and its netdevs as asked, in one command:
        each SSH command costs ~0.1-0.3 s under TCG."""
        # Shell builtins only (`read`, `cd -P`), no `cat` or `readlink`: under TCG a fork and
        # exec costs ~20-50 ms, and a fork per file cost ~2 s on a loaded host.
        then = ""
        if devlink:
            then += '; devlink dev show "pci/$b" > /dev/null 2>&1 && echo devlink'
        if netdevs:
            then += f"; {_listing('$b')}"
        console_at = len(self.rig.console.text)
        res = self.rig.sh(
            "for d in /sys/bus/pci/devices/*; do read v < $d/vendor; read i < $d/device; "
            '[ "$v:$i" = 0x15b3:0x1003 ] || continue; b=${d##*/}; drv=; '
            'cd -P "$d/driver" 2>/dev/null && drv=${PWD##*/} && cd /; '
            f"echo card $b $drv{then}; done; true"
        )
        lines = res.stdout.splitlines()
        cards = [ln.split() for ln in lines if ln.startswith("card ")]
        if not cards:
            raise RigError(f"no {CX3_PCI_ID} device on the guest's PCI bus")
        bdf, driver = cards[0][1], (cards[0][2:] or [""])[0]
        return CardState(
            bdf,
            driver,
            "devlink" in lines,
            _netdevs(lines) if netdevs else None,
            console_at,
        )

    def wait_bound(self) -> str:
        """The devlink handle of the emulated device, which mlx4_core must have registered."""
        return self.bound().handle

    def bound(self, netdevs: bool = False) -> CardState:
        """The card, which mlx4_core must have bound and registered with devlink; with
        `netdevs`, listed in the same command.

        modprobe probes synchronously: by the time it returns (at boot, the guest's init runs
        it before reporting ready) the driver has either bound the device or given up.
        """
        state = self._scan(devlink=True, netdevs=netdevs)
        if state.driver == "mlx4_core" and state.registered:
            return state
        raise KernelFailure(f"mlx4_core did not bind {state.bdf}: {self.complaint()}")

    def complaint(self) -> str:
        """The driver's own words about why it is not working, from the kernel log."""
        lines = [
            ln
            for ln in self.rig.dmesg().splitlines()
            if "mlx4" in ln and re.search(r"fail|error|abort|unsupported|blacklist", ln, re.I)
        ]
        return "; ".join(ln.split("]", 1)[-1].strip() for ln in lines[-4:]) or "dmesg is silent"

    def unload(self, timeout: float = 120.0) -> None:
        """rmmod the mlx4 stack: mlx4_en (loaded by mlx4_core's probe) first, if there."""
        self.rig.sh(
            "if [ -d /sys/module/mlx4_en ]; then rmmod mlx4_en; fi; rmmod mlx4_core",
            timeout=timeout,
        )

    def reprobe(self) -> None:
        """rmmod + modprobe mlx4_core: a new devlink instance, every parameter at its default,
        no snapshots, snapshot ids from scratch — a clean device without a reboot."""
        rig = self.rig
        before, since = self.netdevs(), len(rig.console.text)
        self.unload()
        params = " ".join((f"msi_x={int(rig.config.msi_x)}", *rig.config.mlx4_params))
        rig.sh(f"modprobe mlx4_core {params}", timeout=180)
        if rig.config.mlx4_en:
            rig.sh("modprobe mlx4_en", timeout=180)  # as at boot: not left to the probe
        self._netdevs_back(before, since, self._bound_again())

    def reload(self) -> None:
        before, since = self.netdevs(), len(self.rig.console.text)
        self.rig.sh(f"devlink dev reload {self.rig.dev_handle}", timeout=RELOAD_TIMEOUT)
        self._netdevs_back(before, since, self._bound_again())

    def _bound_again(self) -> CardState:
        """bound() at the same address, its netdevs listed (for _netdevs_back)."""
        state = self.bound(netdevs=True)
        if state.handle != self.rig.dev_handle:
            raise KernelFailure(
                f"the device came back as {state.handle}, was {self.rig.dev_handle}"
            )
        return state

    # --- netdevs (mlx4_en) ----------------------------------------------------------------

    def netdevs(self) -> list[Netdev]:
        """The card's netdevs, in name order (none without mlx4_en), in whichever network
        namespace they are: rig.traffic moves them into named ones (`ip netns`), where
        sysfs shows them only to a process that mounts it there (`ip netns exec` does)."""
        bdf = self.rig.dev_handle.split("/", 1)[1]
        return _netdevs(self.rig.sh(_listing(bdf)).stdout.splitlines())

    def wait_netdevs_up(
        self, since: int = 0, timeout: float = RECOVERY_TIMEOUT, listed: CardState | None = None
    ) -> list[Netdev]:
        """Wait until every netdev of the card is up with carrier, as the guest's netup
        watcher reports it on the console (after console offset `since`; RigConfig.netdev_up
        starts the watcher); KernelFailure if one is not. `listed`: a scan that listed them
        already (one SSH command fewer)."""
        if listed is not None and listed.netdevs is not None:
            console_at, netdevs = listed.console_at, listed.netdevs
        else:
            console_at = len(self.rig.console.text)
            netdevs = self.netdevs()
        if not netdevs:
            raise KernelFailure(f"mlx4_en created no netdev: {self.complaint()}")
        patterns = [re.compile(re.escape(NETDEV_UP.format(name=n.name))) for n in netdevs]
        # Up lines that were on the console before that listing: the listing is the check.
        seen = self.rig.console.text[since:console_at]
        if all(p.search(seen) for p in patterns) and not self._down(netdevs):
            return netdevs
        for n, pattern in zip(netdevs, patterns, strict=True):
            try:
                self.rig.console.wait_for(pattern, timeout, start=since)
            except RigError as e:
                raise KernelFailure(f"{n.name} did not come up: {e}") from e
        netdevs = self.netdevs()
        if down := self._down(netdevs):
            raise KernelFailure(f"netdevs not up with carrier: {down} ({netdevs})")
        return netdevs

    @staticmethod
    def _down(netdevs: list[Netdev]) -> list[str]:
        """The names of those not up with carrier."""
        return [n.name for n in netdevs if n.operstate != "up" or not n.carrier]

    # --- regions -------------------------------------------------------------------------

    def regions(self) -> dict[str, RegionInfo]:
        """Region name -> what iproute2's devlink lists for this device's region."""
        return regions_of(self.rig.devlink.regions(), self.rig.dev_handle)

    def snapshot_ids(self) -> dict[str, list[int]]:
        return {name: r.snapshots for name, r in self.regions().items()}

    def enable_snapshots(self, *cmodes: str) -> None:
        for cmode in cmodes or ("runtime",):
            self.rig.devlink.param_set(self.rig.dev_handle, "region_snapshot_enable", "true", cmode)

    # --- faults --------------------------------------------------------------------------

    def kmsg_count(self, text: str) -> int:
        """How often the kernel log holds `text` (to wait for the next one)."""
        return self.rig.dmesg().count(text)

    def fault(
        self,
        kind: str = "catas",
        *,
        words: tuple[int, ...] = builtin.CATAS_WORDS,
        opcode: int | None = None,
        timeout: float | None = None,
        expect_snapshots: bool = True,
        strict: bool = True,
        before_inject: Callable[[], None] | None = None,
    ) -> FaultCycle:
        """Inject a fault, collect the region notifications, take the device's truth and
        wait for the driver to recover.

        expect_snapshots=False: the driver must take none (nothing is listened for).
        strict=False: missing notifications are recorded in `missing` instead of raising,
        and the recovery is still awaited (rig validate judges the two separately).
        before_inject: called once the notifications are listened for, right before the
        injection (rig.traffic starts its stream there, so that it runs when the fault hits).
        """
        if kind not in FAULTS:
            raise RigError(f"unknown fault {kind!r}; choose one of {', '.join(FAULTS)}")
        rig = self.rig
        timeout = timeout or SNAPSHOT_TIMEOUT[kind]
        crdumps = rig.device.state()["crdumps"]  # the index the next crdump gets
        netdevs = self.netdevs()
        console_at = len(rig.console.text)
        # The watch is the netlink agent's (rig.devlink.agent): started here if it is not
        # running, before the injection, so its start-up delays no part of the fault. It
        # also waits for a catas recovery's kernel log line (the reset's end): a program of
        # its own in the guest cost each fault 0.2-0.4 s, and started after the snapshots it
        # ran during the reset's msleep and kept the guest busy there.
        recovery = kind == "catas"
        count = len(REGIONS) if expect_snapshots else 0
        watch = (
            rig.netlink.watch(count, kmsg=RESTARTED if recovery else None)
            if count or recovery
            else None
        )
        reload: Background | None = None
        try:
            if before_inject is not None:
                before_inject()
            cycle = FaultCycle(
                kind,
                "catas poll" if kind == "catas" else "devlink dev reload",
                time.monotonic(),
                netdevs_before=netdevs,
            )
            reload = self._inject(kind, words, opcode)
            if expect_snapshots and watch is not None:
                try:
                    for _ in REGIONS:
                        cycle.events.append(watch.next(timeout))
                        cycle.arrivals.append(time.monotonic())
                except RigError as e:
                    cycle.missing = (
                        f"no snapshot after the {kind} fault: {self.why_no_snapshot()} ({e})"
                    )
                    if strict:
                        raise KernelFailure(cycle.missing) from e
            listed = self._await_recovery(cycle, reload, watch if recovery else None)
        finally:
            if watch is not None:
                watch.close()
            if reload is not None:
                reload.close()
        if rig.device.state()["crdumps"] > crdumps:
            cycle.truth = rig.device.crdump(crdumps)
        cycle.netdevs_after = self._netdevs_back(netdevs, console_at, listed)
        if expect_snapshots and strict:
            cycle.snapshot_id()
            if cycle.truth is None:
                raise KernelFailure("the driver made snapshots but the device saw no crdump")
        return cycle

    def _inject(self, kind: str, words: tuple[int, ...], opcode: int | None) -> Background | None:
        """Make the driver hit the fault; the running reload for command faults."""
        device = self.rig.device
        if kind == "catas":
            device.fault("catas", words=words)  # the driver's catas poll finds it
            return None
        # In steady state mlx4_core sends no command; a reload tears down (CLOSE_PORT, then
        # the closing commands) and probes again.
        if kind == "cmd-timeout":
            device.fault("cmd_timeout", opcode=opcode)
        else:
            device.fault("closing_cmd", opcode=opcode)
        return self.rig.spawn(f"devlink dev reload {self.rig.dev_handle}")

    def _await_recovery(
        self, cycle: FaultCycle, reload: Background | None, recovery: RegionWatch | None
    ) -> CardState:
        """Until the driver has recovered: `recovery` has its restart line, or `reload` ended."""
        if recovery is not None:
            record = recovery.kmsg(RECOVERY_TIMEOUT)
            if "ret=0" not in record.message:
                raise KernelFailure(f"the driver did not recover: {record.message}")
            cycle.recovery = record.message
            cycle.guest_recovered = record.realtime_s
        elif reload is not None:
            status = reload.wait(RELOAD_TIMEOUT)
            if status != 0:
                raise KernelFailure(
                    f"`devlink dev reload` failed after the {cycle.kind} fault "
                    f"(exit {status}): {reload.stderr().strip()}"
                )
            cycle.recovery = "devlink dev reload: exit 0"
        cycle.t_recovered = time.monotonic()
        return self._bound_again()

    def _netdevs_back(self, before: list[Netdev], since: int, listed: CardState) -> list[Netdev]:
        """After a reset the driver re-creates its netdevs: the same names and MACs must come
        back, and those that were up must be up again with carrier. `listed`: the scan that
        found the driver bound again, with its netdevs."""
        if self.rig.config.netdev_up and any(n.operstate == "up" for n in before):
            after = self.wait_netdevs_up(since, listed=listed)
        else:
            assert listed.netdevs is not None
            after = listed.netdevs
        was = [(n.name, n.mac) for n in before]
        now = [(n.name, n.mac) for n in after]
        if was != now:
            raise KernelFailure(f"the netdevs came back as {now}, were {was}")
        return after

    def why_no_snapshot(self) -> str:
        self.rig.check_health()
        dmesg = self.rig.dmesg()
        if SNAPSHOTS_DISABLED in dmesg:
            return "the driver skipped it: region_snapshot_enable is false"
        if NO_HEALTH_BUFFER in dmesg:
            return "the driver skipped it: the firmware advertises no health buffer"
        if INTERNAL_ERROR not in dmesg and "timed out" not in dmesg:
            return f"the driver never noticed the fault ({self.complaint()})"
        return f"the driver noticed the fault but made no snapshot ({self.complaint()})"


def regions_of(regions: list[RegionInfo], dev: str) -> dict[str, RegionInfo]:
    """The regions of device `dev` (a devlink handle), by name."""
    return {r.handle.rsplit("/", 1)[-1]: r for r in regions if r.handle.startswith(dev + "/")}


def _listing(bdf: str) -> str:
    """A guest command listing the netdevs of the card at `bdf` (a word the shell expands,
    e.g. "$b"), one "netdev NAME MAC OPERSTATE CARRIER NETNS" line each ("-": the initial
    namespace), in every namespace. Builtins only in the initial namespace (no fork)."""
    listing = (
        'cd "/sys/bus/pci/devices/$bdf/net" 2>/dev/null && for n in *; do '
        '[ -e "$n" ] || continue; read a < $n/address; read o < $n/operstate; '
        # carrier cannot be read while the netdev is down (EINVAL)
        "read c < $n/carrier 2>/dev/null || c=0; "
        'echo "netdev $n $a $o $c $ns"; done; cd /'
    )
    in_netns = shlex.quote(f"ns=$0 bdf=$1; {listing}")
    return (
        f'ns=- bdf="{bdf}"; {listing}; for p in /run/netns/*; do [ -e "$p" ] && '
        f'ip netns exec "${{p##*/}}" sh -c {in_netns} "${{p##*/}}" "{bdf}"; done; true'
    )


def _netdevs(lines: list[str]) -> list[Netdev]:
    """The netdevs in _listing's lines, in name order."""
    found = [
        Netdev(name, mac, state, carrier == "1", "" if ns == "-" else ns)
        for _, name, mac, state, carrier, ns in (
            ln.split() for ln in lines if ln.startswith("netdev ")
        )
    ]
    return sorted(found, key=lambda n: n.name)
