"""A running rig: one emulated ConnectX-3 (device-model process) and the guest that drives it.

This is the library the CLI, the jobs, the pytest plugin and users' scripts share. Jobs and
tests talk to a `Rig` — guest commands (`sh`, `spawn`, `put`), the kernel log, the console,
the devlink channels, the device's control client, the driver under test (`rig.mlx4`) —
never to QEMU or SSH underneath (`rig.machine` is there for VM-level tests only):

    with Rig(RigConfig(log_dir=Path("out"))) as rig:
        rig.mlx4.enable_snapshots()
        cycle = rig.mlx4.fault("catas")
        assert rig.devlink.dump(rig.region("cr-space"), cycle.snapshot_id()) == \
            cycle.expected("cr-space")
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import shlex
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from cx3 import hcr
from cx3.client import ControlClient
from cx3.pci import GATEWAY_ADDRESS
from rig import cpus, settings, signals
from rig.devicemodel import DeviceModel
from rig.devlink import agent
from rig.devlink.agent import NetlinkAgent
from rig.devlink.channels import CliChannel, NetlinkChannel, open_channel
from rig.devlink.cli import DevlinkCli
from rig.errors import DeviceModelError, MachineError, RigError
from rig.gcov import counters_dest, save_counters
from rig.mlx4 import Mlx4
from rig.process import owned_tempdir, sweep_tempdirs
from rig.progress import step
from rig.provision.kcoverage import CoverageBuild, coverage_build
from rig.provision.qemu import built_with
from rig.provision.sshkeys import rig_key
from rig.vm import clock as vmclock
from rig.vm import shell as guestshell
from rig.vm.cmdline import Modprobe
from rig.vm.console import SerialConsole
from rig.vm.machine import BootTimes, Machine, MachineConfig, QemuInstall
from rig.vm.saved import SavedVm, SavedVmError, card_line, discard, ensure_saved
from rig.vm.ssh import Background, Result, Sink, SshIdentity
from vfio_user.qemu import (
    delivers_irqs_after_access,
    posts_bar0_window,
    posts_config_dword,
    posts_with_mmap,
    remaps_after_intx,
)

logger = logging.getLogger(__name__)


# How a rig's guest starts (RigConfig.boot): "fresh", QEMU boots the kernel; "saved", the
# guest resumes from a saved VM (rig.vm.saved), then the card is plugged in and the driver
# loaded.
BOOT_MODES = ("fresh", "saved")
# Saved since session 10: the e2e suite passed 20 times in a row resuming saved VMs on the
# warped clock (session 9), and so did replays on Debian's 6.12 and 7.2 kernels; a warm
# replay resumes in ~1.5 s instead of booting in ~4.5 s. `--boot fresh` or RIG_BOOT=fresh
# boots the kernel; tox's e2e and chaos envs keep fresh boots tested.
DEFAULT_BOOT = "saved"
BOOT_ENV = "RIG_BOOT"  # the boot mode when no option names one, as RIG_CLOCK is the clock


def remaps_safely(binary: Path) -> bool:
    """Whether this QEMU maps BAR0 again after an INTx (patch 0004) without the TLB race
    that INTX_REMAP_NEEDS fixes."""
    return remaps_after_intx(binary) and built_with(binary, INTX_REMAP_NEEDS)


def resolve_boot(boot: str | None) -> str:
    """`boot`, else $RIG_BOOT, else DEFAULT_BOOT; UsageError naming a bad one."""
    return settings.choice(boot, "boot mode", BOOT_ENV, DEFAULT_BOOT, BOOT_MODES)


# The kernel's words when mlx4_core's probe of a device fails (drivers/base/dd.c).
PROBE_FAILED = r"mlx4_core: probe of \S+ failed"
# ms of guest time after an answered INTx before QEMU maps the card's BARs again (vfio-pci's
# default is 1100; vfio-user-pci's, without the rig's patch 0004, never). 0 would leave an
# INTx rig's crdump reading BAR0 as 262,144 trapped round trips (~15 s under TCG), not as
# memory. Only on a QEMU built with patch 0007 (INTX_REMAP_NEEDS): every INTx changes the
# memory map twice, and QEMU 10.2's TCG without it looks a stale MMIO TLB entry's section
# index up in the new map until the vCPU's queued TLB flush runs: an INTx rig's QEMU aborted
# on `section_index < d->map.sections_nb` in the 18th run of a suite loop (docs/clock.md).
INTX_REMAP_MS = 1
INTX_REMAP_NEEDS = "0007-tcg-io-tlb-entry-keeps-its-section.patch"


@dataclass(frozen=True)
class RigConfig:
    log_dir: Path
    kernel: str | None = None  # None: Debian's packaged kernel (see rig.provision.kernel)
    userspace: str | None = None  # the root fs's Debian release; None: the kernel's choice
    qemu: Path | None = None  # None: $RIG_QEMU, a new enough system QEMU, or the cached build
    qemu_version: str | None = None  # build and use this Debian qemu source, not the pinned one
    msi_x: bool = True
    mlx4_params: tuple[str, ...] = ()
    load_driver: bool = True
    with_device: bool = True
    memory_mib: int = 1024
    boot_timeout: float = 180.0
    mlx4_en: bool = True  # False: mlx4_en is blacklisted (mlx4_core alone, as before 0.2)
    netdev_up: bool = True  # the card's netdevs up at boot and after every re-creation
    extra_modprobe: tuple[Modprobe, ...] = ()  # loaded at boot after mlx4_core
    kernel_args: tuple[str, ...] = ()
    name: str = "rig"
    hang_after: float = 90.0  # s without console output or SSH answer: the guest hung
    boot: str | None = None  # one of BOOT_MODES; None: $RIG_BOOT or DEFAULT_BOOT
    clock: str | None = None  # rig.vm.clock: "warp" or "real"; None: $RIG_CLOCK or the default
    # On warp, icount's shift (rig.vm.clock.BUSY_SHIFT for a guest busy while it waits for
    # the driver's timers); None: $RIG_WARP_SHIFT or rig.vm.clock.SHIFT
    warp_shift: int | None = None


@dataclass
class Timings:
    provision: float = 0.0
    device_start: float = 0.0
    boot: float = 0.0  # QEMU launch to SSH ready (includes modprobe at boot)
    # host monotonic times: "bound" (mlx4_core's devlink device seen), "netdevs_up", and for a
    # saved boot "card_plugged" (the guest took the hot-plugged card)
    marks: dict[str, float] = field(default_factory=dict)


class Rig:
    def __init__(self, config: RigConfig) -> None:
        self.config = config
        self.log_dir = config.log_dir
        self.timings = Timings()
        self._rundir: Path | None = None
        self._device: DeviceModel | None = None
        self._machine: Machine | None = None
        self._devlink: DevlinkCli | None = None
        self._netlink: NetlinkAgent | None = None
        self.dev_handle = ""  # "pci/0000:00:03.0" once the driver is bound
        self.mlx4 = Mlx4(self)
        self.qemu_version = ""
        self.kernel_release = ""
        self.kernel_origin = ""
        self._ssh_identity: SshIdentity | None = None  # after a restore: this rig's key
        self.saved: SavedVm | None = None  # the saved VM a "saved" boot resumed
        self.clock = ""  # "warp" or "real" once started
        self.boot = ""  # "fresh" or "saved" once started
        self._coverage: CoverageBuild | None = None  # a coverage kernel's gcov data

    # --- lifecycle --------------------------------------------------------------------------

    def start(self) -> Rig:
        from rig.provision.guest import ensure_guest
        from rig.provision.qemu import qemu_for

        self.clock = vmclock.resolve(self.config.clock)
        self.boot = resolve_boot(self.config.boot)
        guestshell.enabled()  # a bad $RIG_GUEST_SHELL is named before anything boots
        self.log_dir.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        qemu: QemuInstall = qemu_for(self.config.qemu, self.config.qemu_version)
        guest = ensure_guest(self.config.kernel, self.config.userspace)
        self.qemu_version = qemu.version
        self.kernel_release = guest.kernel.release
        self.kernel_origin = guest.kernel.origin
        self._coverage = coverage_build(guest.kernel.vmlinuz.parent)
        self.timings.provision = time.monotonic() - t0
        # Socket paths must stay short (108 bytes), so not under the caller's log dir. A rig
        # killed outright left its directories behind: its owner file says so.
        sweep_tempdirs()
        self._rundir = owned_tempdir("rig-run-")
        try:
            lockstep = vmclock.lockstep(self.clock)
            sockets: tuple[Path, ...] = ()
            cpu: int | None = None
            if self.config.with_device:
                t0 = time.monotonic()
                # In lockstep QEMU and the model share a CPU: a round trip between them
                # is then a context switch, not a cross-CPU wake-up (rig.cpus).
                with cpus.claim(lockstep) as cpu:
                    self._device = DeviceModel(
                        self._rundir, self.log_dir, inline_work=lockstep, cpu=cpu
                    )
                    self._device.start()
                sockets = (self._device.socket,)
                self.timings.device_start = time.monotonic() - t0
            modprobe: tuple[Modprobe, ...] = ()
            if self.config.load_driver:
                params = (f"msi_x={int(self.config.msi_x)}", *self.config.mlx4_params)
                modprobe = (Modprobe("mlx4_core", params),)
                if self.config.mlx4_en:
                    # mlx4_core's probe only asks for it without waiting (6.1) or leaves it
                    # to the auxiliary bus (6.12+): load it before the guest says ready.
                    modprobe += (Modprobe("mlx4_en"),)
            modprobe += self.config.extra_modprobe
            key = rig_key(self._rundir)
            saved = self.boot == "saved"
            mconfig = MachineConfig.for_guest(
                qemu,
                guest,
                self.log_dir,
                # A saved VM has the cache's key; this rig's replaces it after the restore.
                client_key=None if saved else key,
                vfio_user_sockets=sockets,
                # The model changes no mapped page on a guest write: doorbells may be posted
                # (not on the warped clock: rig.vm.clock.lockstep).
                posted_writes=posts_with_mmap(qemu.binary) and not lockstep,
                # The gateway address only selects the dword that the data register's
                # access reaches: mstregdump's dword reads need one round trip, not two.
                posted_config_dword=GATEWAY_ADDRESS if posts_config_dword(qemu.binary) else 0,
                # The HCR's six parameter words are latched until its GO word is written:
                # a firmware command waits for one round trip, not seven (on warp, where
                # the card's other writes wait for the model).
                posted_bar0=hcr.PARAMETERS if posts_bar0_window(qemu.binary) else None,
                # After each INTx QEMU traps the BARs until the guest answers it (the first
                # trapped access is the EOI); then they are mapped again, not kept trapped.
                intx_remap_ms=INTX_REMAP_MS if remaps_safely(qemu.binary) else 0,
                # In lockstep the card's interrupts are ordered with the vCPU's time too:
                # one raised while the model answers an access is pending when the vCPU
                # runs on, not when QEMU's main loop is next scheduled (docs/clock.md).
                irqs_after_access=lockstep and delivers_irqs_after_access(qemu.binary),
                clock=self.clock,
                paced_warp=self.clock != vmclock.WARP or vmclock.paces_warp(qemu.binary),
                warp_shift=self.config.warp_shift,
                modprobe=modprobe,
                memory_mib=self.config.memory_mib,
                name=self.config.name,
                kernel_args=self._kernel_args(),
                hang_after=self.config.hang_after,
                cpu=cpu,
            )
            if saved:
                self._ssh_identity = SshIdentity(key.private, guest.rootfs.host_key)
                what = f"{guest.kernel.release} under QEMU {qemu.version} ({self.clock} clock)"
                with step(f"resuming a saved {what}"):
                    self._boot_saved(mconfig, key.public)
            else:
                self._machine = self._new_machine(mconfig)
                what = f"{guest.kernel.release} under QEMU {qemu.version} (TCG, {self.clock} clock)"
                with step(f"booting {what}"):
                    self._boot()
        except BaseException as e:
            self._stop_after_error(e)
            raise
        return self

    def _new_machine(self, mconfig: MachineConfig) -> Machine:
        machine = Machine(mconfig)
        if self._device is not None and self._device.pid is not None:
            machine.watch_process("device model", self._device.pid, self._model_fate)
        return machine

    def _boot_saved(self, mconfig: MachineConfig, public_key: str) -> None:
        """Resume the saved VM for `mconfig` (saved now if there is none; its modules are
        loaded), give it this rig's key and the time, and plug the card in. A saved VM that
        fails its checks or that QEMU refuses is rebuilt once."""
        services = (agent.saved_service(),)
        saved = ensure_saved(mconfig, self.log_dir, self.config.boot_timeout, services)
        for attempt in (1, 2):
            self._machine = machine = self._new_machine(saved.restore_config(mconfig))
            t0 = time.monotonic()
            try:
                verifier = saved.verifier()
                machine.launch()
                machine.restore(saved.state, self.config.boot_timeout)
                # Before the card meets the guest: a bad state costs only this VM.
                verifier.check()
            except (SavedVmError, MachineError) as e:
                model_died = self._device is not None and not self._device.alive()
                if attempt == 2 or model_died:
                    raise
                machine.shutdown(graceful=False)
                self._machine = None
                discard(saved, str(e).splitlines()[0])
                saved = ensure_saved(mconfig, self.log_dir, self.config.boot_timeout, services)
                continue
            break
        self.saved = saved
        # Only this rig's key opens the guest from now on; the guest's clock stopped when
        # it was saved. Run while the guest takes the card: each SSH command costs ~0.3 s.
        welcome = (
            f"echo {shlex.quote(public_key)} > /root/.ssh/authorized_keys"
            f" && date -s @{time.time():.3f} > /dev/null"
        )
        self._devlink = DevlinkCli(self.machine.ssh)
        self._netlink = NetlinkAgent(self.machine.ssh, port=agent.PORT)
        if self._device is not None:
            self._plug_card(welcome)
            self.timings.marks["card_plugged"] = time.monotonic()
        else:
            self.sh(welcome)
        # Launch to the card taken by the driver, as a fresh boot's SSH ready is.
        self.timings.boot = time.monotonic() - t0
        self._driver_ready()

    def _plug_card(self, before: str) -> None:
        """Plug the card in, run guest command `before` meanwhile, and wait for the kernel
        to take the card (the saved guest's card watcher says so on the console): mlx4_core
        bound, or its probe failed, when the driver is loaded, else the device added. A
        driver that is not bound is wait_bound's to explain."""
        assert self._device is not None
        since = len(self.console.text)
        self.machine.hotplug(0, self._device.socket)
        loaded = self.sh(
            f"{before}; r=$?; [ -d /sys/module/mlx4_core ] && echo loaded; exit $r"
        ).stdout
        if not self.config.load_driver:
            wanted = card_line("add")
        elif "loaded" in loaded:
            wanted = card_line("bind", "mlx4_core")
        else:
            return  # its modprobe at boot failed: the saved guest's console log says why
        pattern = re.compile(f"{wanted.pattern}|{PROBE_FAILED}")
        line = self.console.wait_for(pattern, self.config.boot_timeout, start=since)
        logger.debug(f"hotplug: {line[0]}")

    def _model_fate(self) -> RigError:
        assert self._device is not None
        return self._device.exit_error() or DeviceModelError("device model exited")

    def _boot(self) -> None:
        assert self._machine is not None
        t0 = time.monotonic()
        self._machine.launch()
        self._machine.wait_ready(self.config.boot_timeout)
        self.timings.boot = time.monotonic() - t0
        self._devlink = DevlinkCli(self._machine.ssh)
        self._netlink = NetlinkAgent(self._machine.ssh)
        self._driver_ready()

    def _driver_ready(self) -> None:
        """Wait for the driver's device (and its netdevs up), as the config asks."""
        if self.config.with_device and self.config.load_driver:
            up = self.config.mlx4_en and self.config.netdev_up
            state = self.mlx4.bound(netdevs=up)  # listed in the same command
            self.dev_handle = state.handle
            self.timings.marks["bound"] = time.monotonic()
            if up:
                self.mlx4.wait_netdevs_up(listed=state)
                self.timings.marks["netdevs_up"] = time.monotonic()

    def _kernel_args(self) -> tuple[str, ...]:
        args = self.config.kernel_args
        if not self.config.mlx4_en:
            args = ("module_blacklist=mlx4_en", *args)
        elif self.config.netdev_up:
            args = ("rig.netup", *args)
        return args

    def stop(self, graceful: bool = True) -> None:
        """Save the guest's and the device's logs, then tear everything down (always): QEMU
        is told to quit (the guest's disk is a throw-away overlay: Machine.shutdown). Not
        `graceful` (after an error or a signal): shorter waits for the logs.
        A signal that comes meanwhile is held until the teardown is done (rig.signals)."""
        with signals.deferred():
            self._stop(graceful)

    def _stop(self, graceful: bool) -> None:
        try:
            machine = self._machine
            if machine is not None and machine.paused and machine.failure is None:
                with contextlib.suppress(RigError):
                    machine.resume()  # for its dmesg
            if machine is not None and machine.failure is None and self._ssh_up(machine):
                # A dead guest has no dmesg to give; the console log has it all then.
                with contextlib.suppress(RigError):
                    (self.log_dir / "dmesg.txt").write_text(
                        self.sh("dmesg", timeout=60 if graceful else 10).stdout
                    )
                if self._coverage is not None:
                    self._save_counters(self._coverage, graceful)
        finally:
            try:
                if self._device is not None and self._device.alive():
                    self._save_device_events()
            finally:
                if self._machine is not None:
                    self._machine.shutdown(graceful=graceful)
                    self._machine = None
                try:
                    if self._device is not None:
                        device, self._device = self._device, None
                        device.stop()  # raises if the model crashed: then the rig failed
                finally:
                    if self._rundir is not None:
                        shutil.rmtree(self._rundir, ignore_errors=True)
                        self._rundir = None

    def __enter__(self) -> Rig:
        return self.start()

    def __exit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None
    ) -> None:
        if v is None:
            self.stop()
        else:
            self._stop_after_error(v)

    @staticmethod
    def _ssh_up(machine: Machine) -> bool:
        try:
            return machine.is_running() and machine.ssh.connected
        except MachineError:  # no SSH yet
            return False

    def _stop_after_error(self, error: BaseException) -> None:
        """Tear down while `error` (or a signal) ends the rig: that error is the story, so
        a second one from the teardown is only logged (not at all when it is the model's
        crash again)."""
        try:
            self.stop(graceful=False)
        except RigError as e:
            if not (isinstance(e, DeviceModelError) and isinstance(error, DeviceModelError)):
                logger.info(f"while stopping: {str(e).splitlines()[0]}")

    def wait_failure(self) -> RigError:
        """Block until QEMU or the device model dies or the guest fails; that failure."""
        failure = self.machine.watch.wait()
        assert failure is not None
        return failure

    def pause(self) -> None:
        """Stop the guest until resume() (Machine.pause): a rig kept for later costs the
        host nothing meanwhile. The device model runs on; nothing in the guest does."""
        self.machine.pause()

    def resume(self) -> None:
        self.machine.resume()

    @property
    def paused(self) -> bool:
        return self._machine is not None and self._machine.paused

    # --- parts --------------------------------------------------------------------------------

    @property
    def machine(self) -> Machine:
        if self._machine is None:
            raise RigError("the rig is not running")
        return self._machine

    @property
    def device(self) -> ControlClient:
        """The emulated card's control surface: fault knobs and the crdump ground truth."""
        return self.device_model.control

    @property
    def device_model(self) -> DeviceModel:
        """The device model's process (its sockets and log)."""
        if self._device is None:
            raise RigError("this rig has no emulated device")
        return self._device

    @property
    def devlink(self) -> DevlinkCli:
        if self._devlink is None:
            raise RigError("the rig is not running")
        return self._devlink

    @property
    def netlink(self) -> NetlinkAgent:
        if self._netlink is None:
            raise RigError("the rig is not running")
        return self._netlink

    def region(self, name: str) -> str:
        return f"{self.dev_handle}/{name}"

    # --- guest helpers ------------------------------------------------------------------------

    def sh(
        self,
        command: str,
        timeout: float = 120.0,
        check: bool = True,
        on_stdout: Sink | None = None,
        on_stderr: Sink | None = None,
    ) -> Result:
        """Run a shell command in the guest; RigError with its stderr if it fails (check)."""
        res = self.machine.ssh.run(command, timeout, on_stdout=on_stdout, on_stderr=on_stderr)
        return res.checked(command) if check else res

    def spawn(self, command: str) -> Background:
        """Start a guest command and return at once; wait(), readline(), close() it."""
        return self.machine.ssh.start(command)

    def put(self, local: Path, remote: str) -> None:
        """Copy a file into the guest."""
        self.machine.ssh.put(local, remote)

    @property
    def boot_times(self) -> BootTimes:
        """When the boot reached each stage (firmware, kernel, init, SSH)."""
        return self.machine.times

    @property
    def console(self) -> SerialConsole:
        """The guest's serial console (kernel messages with host arrival times)."""
        return self.machine.console

    def channel(self, name: str, as_user: str = "") -> CliChannel | NetlinkChannel:
        """A new devlink channel ("cli" or "netlink") into the guest, e.g. as another user
        (as_user: a command prefix such as rig.devlink.channels.UNPRIVILEGED); close() it."""
        return open_channel(name, self.machine.ssh, as_user)

    def dmesg(self) -> str:
        return self.sh("dmesg", timeout=60).stdout

    def ssh_access(self) -> tuple[int, SshIdentity]:
        """The host port of the guest's sshd and the keys to reach it, for another process
        (`rig up` publishes them for `rig sh`)."""
        return self.machine.ssh_port, self._ssh_identity or self.machine.config.ssh

    def processes(self) -> dict[str, int]:
        """The processes this rig owns, by name: QEMU and the device model."""
        found = {}
        if self._machine is not None and self._machine.pid is not None:
            found["QEMU"] = self._machine.pid
        if self._device is not None and self._device.pid is not None:
            found["device model"] = self._device.pid
        return found

    def tempdirs(self) -> list[Path]:
        """The temporary directories this rig owns (sockets, its SSH key)."""
        dirs = [self._rundir] if self._rundir is not None else []
        if self._machine is not None and self._machine.tempdir is not None:
            dirs.append(self._machine.tempdir)
        return dirs

    def is_running(self) -> bool:
        """Whether QEMU is up (False before start and after stop)."""
        return self._machine is not None and self._machine.is_running()

    def check_health(self) -> None:
        """Raise a clear error if QEMU or the device model died, or the guest failed."""
        if self._machine is not None and self._machine.failure is not None:
            raise self._machine.failure
        if self._device is not None:
            self._device.check_alive()
        if self._machine is not None and not self._machine.is_running():
            raise MachineError("QEMU exited unexpectedly", self.log_dir / "console.log")

    def wait_kmsg(self, pattern: str, nth: int = 1, timeout: float = 60.0) -> str:
        """Block until the guest kernel logs `pattern` (a plain substring) for the nth time
        since boot; the message (the netlink agent reads the guest's /dev/kmsg)."""
        return self.netlink.kmsg(pattern, nth, timeout).message

    def _save_counters(self, build: CoverageBuild, graceful: bool) -> None:
        try:
            dest = counters_dest(self.log_dir, self.config.name)
            n = save_counters(self, build, dest, 60 if graceful else 20)
        except RigError as e:  # best effort: never mask the run's own outcome
            logger.info(f"could not save the gcov counters: {str(e).splitlines()[0]}")
            return
        logger.debug(f"saved {n} gcov counter files in {dest}")

    def _save_device_events(self) -> None:
        assert self._device is not None
        try:
            page = self._device.control.events(0)
        except Exception as e:  # the log is best effort; never mask the real failure
            logger.info(f"could not save the device event log: {e}")
            return
        with (self.log_dir / "device-events.jsonl").open("w") as f:
            for event in page.events:
                f.write(json.dumps(event) + "\n")
