"""One VM's lifecycle: launch QEMU, wait for the guest, talk to it, tear everything down.

In the spirit of QEMU's python/qemu/machine/machine.py: the command line is a pure function
of a MachineConfig; sockets live in a private temporary directory; logs (console.log, qmp.log,
qemu-stderr.log, qemu-cmdline.txt) go to a caller-chosen directory that outlives the VM.

QEMU runs in its own session (a Ctrl-C at the terminal reaches only the rig, which then
shuts it down in order) and with PR_SET_PDEATHSIG, so it dies with the thread that launched
it even if the rig is killed outright: launch from a thread that outlives the VM. Its stderr
goes through a pipe into a capped log (rig.vm.logcap). From launch on, a Watch (rig.vm.watch)
ends every wait within a second of QEMU (or a process given to `watch_process`) exiting, the
guest panicking, oopsing or hanging, and names which.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import shlex
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

from rig.cpus import on_cpu
from rig.errors import GuestOops, GuestPanic, MachineError, QemuExited, RigError, tail
from rig.kernellog import OOPS, PANIC, oops_line, panic_reason, report_from
from rig.process import Identity, die_with_parent, owned_tempdir
from rig.provision.guest import GuestImage
from rig.provision.sshkeys import ClientKey
from rig.vm import clock as vmclock
from rig.vm.cmdline import Modprobe, kernel_cmdline
from rig.vm.console import SerialConsole
from rig.vm.logcap import STDERR_LIMIT, PipeLog
from rig.vm.qmp import Monitor
from rig.vm.ssh import GuestSsh, SshIdentity, SshRefused
from rig.vm.watch import Fate, Watch
from vfio_user.qemu import device_arg

READY = re.compile(r"rig-guest: ready")
# The kernel's last line before it runs the initramfs's /init: splits the boot time.
KERNEL_DONE = re.compile(r"Run /init as init process")
GUEST_IP = "10.0.2.15"
# The PCIe root port a card is hot-plugged into after a restore (MachineConfig.hotplug_slot).
HOTPLUG_BUS = "hp0"
# How a VM is saved to a file and loaded back (both ends must agree): a MIGRATION event at
# each status change, so a save or restore is awaited, not polled; mapped-ram puts each RAM
# page at a fixed offset, so a restore reads RAM in large blocks, not page by page.
SAVE_CAPABILITIES = ("events", "mapped-ram")
# A save is not a live migration: nothing competes for the link, so QEMU's default cap of
# 128 MiB/s (max-bandwidth) only makes it slower. Bytes per second.
SAVE_BANDWIDTH = 64 << 30
QUIT_TIMEOUT = 3.0  # s for QMP quit at teardown, before SIGTERM


class QemuInstall(Protocol):
    """What the rig needs of a QEMU (rig.provision.qemu.Qemu, LocalQemu)."""

    @property
    def binary(self) -> Path: ...

    @property
    def firmware_dirs(self) -> tuple[Path, ...]: ...

    @property
    def version(self) -> str: ...


@dataclass(frozen=True)
class MachineConfig:
    qemu: QemuInstall
    kernel: Path
    initrd: Path
    rootfs: Path  # raw base image; attached copy-on-write, never modified
    ssh: SshIdentity
    log_dir: Path
    memory_mib: int = 1024
    smp: int = 1
    modprobe: tuple[Modprobe, ...] = ()  # loaded by the guest's init before "ready"
    kernel_args: tuple[str, ...] = ()
    vfio_user_sockets: tuple[Path, ...] = ()  # one vfio-user-pci device (cxN) each
    # The card's writes may be posted although BAR0 is mapped (a QEMU with the rig's patch)
    posted_writes: bool = False
    # A config dword the card only latches (its CR-space gateway's address): QEMU may post
    # writes to it (a QEMU with the rig's patch; 0: none)
    posted_config_dword: int = 0
    # (offset, size) of BAR0 bytes the card only latches (its HCR's parameters): QEMU may
    # post writes to them (a QEMU with the rig's patch; None: none)
    posted_bar0: tuple[int, int] | None = None
    # ms of guest time after an answered INTx before the card's BARs are mapped again (a
    # QEMU with the rig's patch; 0: QEMU's default, never again)
    intx_remap_ms: int = 0
    # The MSIs the card signals while it answers a BAR access reach the guest before its vCPU
    # runs on (a QEMU with the rig's patch; else when QEMU's main loop reads them)
    irqs_after_access: bool = False
    clock: str = vmclock.REAL  # rig.vm.clock: "real" or "warp"
    # The QEMU paces warp (rig.vm.clock.paces_warp: the rig's patch); else warp is sleep=off.
    paced_warp: bool = True
    warp_shift: int | None = None  # rig.vm.clock.qemu_args; None: $RIG_WARP_SHIFT or SHIFT
    qemu_args: tuple[str, ...] = ()
    name: str = "rig"
    # A free PCIe root port (HOTPLUG_BUS) for a card added after a restore (rig.vm.saved).
    hotplug_slot: bool = False
    # Start paused, waiting for Machine.restore's saved state (-incoming defer).
    incoming: bool = False
    # The guest writes into `rootfs` itself (a saved VM's own disk), not into an overlay.
    rootfs_writable: bool = False
    # No console output and no SSH answer for this long is a hang (rig.vm.watch). Above the
    # longest silence of a sound guest: mlx4's crdump under INTx holds the vCPU for 15-30 s.
    hang_after: float = 90.0
    cpu: int | None = None  # the one QEMU runs on, its device model's (rig.cpus)

    @classmethod
    def for_guest(
        cls,
        qemu: QemuInstall,
        guest: GuestImage,
        log_dir: Path,
        client_key: ClientKey | None = None,
        **options: Any,
    ) -> MachineConfig:
        """A config booting a provisioned guest; `options` set the other fields. With
        `client_key` (rig.provision.sshkeys.rig_key) the guest accepts that key only, not
        the cache's."""
        kernel_args: tuple[str, ...] = options.pop("kernel_args", ())
        if client_key is not None:
            kernel_args = (f"rig.sshkey={client_key.public.split()[1]}", *kernel_args)
        return cls(
            qemu=qemu,
            kernel=guest.kernel.vmlinuz,
            initrd=guest.initrd,
            rootfs=guest.rootfs.image,
            ssh=SshIdentity((client_key or guest.client_key).private, guest.rootfs.host_key),
            log_dir=log_dir,
            kernel_args=kernel_args,
            **options,
        )


@dataclass(frozen=True)
class RuntimePaths:
    """Where one VM's sockets are (inside its private temporary directory)."""

    qmp_socket: Path
    console_socket: Path

    @classmethod
    def under(cls, directory: Path) -> RuntimePaths:
        return cls(directory / "qmp.sock", directory / "console.sock")


def _opt(value: object) -> str:
    """A value inside a QEMU -opt list: commas are doubled."""
    return str(value).replace(",", ",,")


def vfio_user_device(index: int, socket_path: Path, config: MachineConfig) -> str:
    return device_arg(
        socket_path,
        f"cx{index}",
        config.posted_writes,
        config.posted_config_dword,
        config.intx_remap_ms,
        config.posted_bar0,
        config.irqs_after_access,
    )


def qemu_command(config: MachineConfig, paths: RuntimePaths) -> list[str]:
    """The full QEMU command line for `config` (pure: no files are touched)."""
    mem = f"{config.memory_mib}M"
    argv = [
        str(config.qemu.binary),
        "-name",
        _opt(config.name),
        # vfio-user DMA reaches guest RAM through a shared memfd the device server maps.
        "-machine",
        # No HPET: the guest's clock is the TSC, and QEMU's HPET model kept a timer firing for the
        # guest's unused broadcast comparator (250 a second on the real clock, 7,300 a host
        # second on warp: most of an idle warp guest's host time).
        "q35,accel=tcg,memory-backend=mem,hpet=off",
        "-object",
        f"memory-backend-memfd,id=mem,size={mem},share=on",
        "-m",
        mem,
        "-smp",
        str(config.smp),
        # RDRAND seeds the guest kernel's RNG at boot; without it sshd blocks for entropy that
        # TCG gathers slowly. (Later -cpu options in qemu_args override this one.)
        "-cpu",
        "qemu64,+rdrand",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
        *vmclock.qemu_args(config.clock, config.paced_warp, config.warp_shift),
    ]
    for d in config.qemu.firmware_dirs:
        argv += ["-L", str(d)]
    argv += [
        "-kernel",
        str(config.kernel),
        "-initrd",
        str(config.initrd),
        "-append",
        kernel_cmdline(config.modprobe, config.kernel_args),
        # Both chardevs connect to sockets the rig already listens on: nothing is lost.
        "-chardev",
        f"socket,id=console,path={_opt(paths.console_socket)}",
        "-serial",
        "chardev:console",
        "-chardev",
        f"socket,id=qmp,path={_opt(paths.qmp_socket)}",
        "-mon",
        "chardev=qmp,mode=control",
        # Port 0: the host kernel picks a free port (read back via "info usernet"), no races.
        # restrict=on: the guest reaches nothing outside (not the host's loopback services);
        # the host forward to its sshd still works.
        "-netdev",
        "user,id=net0,ipv6=off,restrict=on,hostfwd=tcp:127.0.0.1:0-:22",
        "-device",
        "virtio-net-pci,netdev=net0,romfile=",
        # snapshot=on: writes go to a temporary overlay, the shared base is opened read-only.
        "-drive",
        f"if=none,id=root,driver=raw,file.driver=file,"
        f"file.filename={_opt(config.rootfs)},snapshot={'off' if config.rootfs_writable else 'on'}",
        "-device",
        "virtio-blk-pci,drive=root",
    ]
    if config.hotplug_slot:
        argv += ["-device", f"pcie-root-port,id={HOTPLUG_BUS},chassis=1"]
    if config.incoming:
        argv += ["-incoming", "defer"]
    for i, sock in enumerate(config.vfio_user_sockets):
        argv += [
            "-device",
            vfio_user_device(i, sock, config),
        ]
    return argv + list(config.qemu_args)


def parse_usernet_port(info_usernet: str, guest_port: int = 22) -> int:
    """The host port of the TCP host forward to `guest_port` in HMP "info usernet" output."""
    for line in info_usernet.splitlines():
        words = line.split()
        # TCP[HOST_FORWARD]  12  127.0.0.1 37609  10.0.2.15  22  0  0
        if len(words) >= 6 and words[0] == "TCP[HOST_FORWARD]" and words[5] == str(guest_port):
            return int(words[3])
    raise MachineError(f"no host forward to guest port {guest_port} in: {info_usernet!r}")


@dataclass
class BootTimes:
    """Host monotonic times of a boot's milestones (None until reached)."""

    launched: float = 0.0
    first_output: float | None = None
    kernel_done: float | None = None  # the kernel runs /init
    ready: float | None = None  # "rig-guest: ready"
    ssh: float | None = None  # SSH session established

    def summary(self) -> str:
        marks = [
            ("firmware+load", self.first_output),
            ("kernel", self.kernel_done),
            ("init", self.ready),
            ("ssh", self.ssh),
        ]
        parts, prev = [], self.launched
        for label, t in marks:
            if t is not None:
                parts.append(f"{label} {t - prev:.2f} s")
                prev = t
        total = (self.ssh or self.ready or prev) - self.launched
        return f"{total:.2f} s ({', '.join(parts)})"


class Machine:
    """One QEMU VM. Use as a context manager: teardown always runs, also on Ctrl-C."""

    def __init__(self, config: MachineConfig, launch_timeout: float = 30.0) -> None:
        self.config = config
        self.launch_timeout = launch_timeout
        self.command: list[str] = []
        self.times = BootTimes()
        self.exit_status: int | None = None
        self._tmp: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: PipeLog | None = None
        self._console: SerialConsole | None = None
        self._watch: Watch | None = None
        self._watched: list[tuple[str, int, Fate]] = []
        self._qmp: Monitor | None = None
        self._ssh: GuestSsh | None = None
        self._ssh_port: int | None = None
        self.paused = False  # pause(): the vCPU stopped by us, not by a save or a restore

    # -- properties -------------------------------------------------------------------------

    @property
    def stderr_log(self) -> Path:
        return self.config.log_dir / "qemu-stderr.log"

    @property
    def console(self) -> SerialConsole:
        if self._console is None:
            raise MachineError("the VM has not been launched")
        return self._console

    @property
    def qmp(self) -> Monitor:
        if self._qmp is None:
            raise MachineError("the VM has no QMP connection (not launched?)")
        return self._qmp

    @property
    def ssh(self) -> GuestSsh:
        if self._ssh is None:
            raise MachineError("no SSH connection: call wait_ready() first")
        return self._ssh

    @property
    def ssh_port(self) -> int:
        if self._ssh_port is None:
            raise MachineError("the VM has not been launched")
        return self._ssh_port

    @property
    def tempdir(self) -> Path | None:
        """The VM's private temporary directory (its sockets), while it exists."""
        return self._tmp

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def watch(self) -> Watch:
        if self._watch is None:
            raise MachineError("the VM has not been launched")
        return self._watch

    def watch_process(self, name: str, pid: int, fate: Fate) -> None:
        """Also end every wait when process `pid` (a child of ours) exits; `fate` says what
        that means. Call before launch."""
        self._watched.append((name, pid, fate))

    @property
    def failure(self) -> RigError | None:
        """What ended the VM, once its watch has seen it (None while all is well)."""
        return self._watch.failure if self._watch is not None else None

    # -- launch -----------------------------------------------------------------------------

    def launch(self) -> None:
        """Start QEMU and connect QMP and the console; MachineError if QEMU does not come up."""
        if self._proc is not None:
            raise MachineError("the VM was already launched")
        try:
            self._launch()
        except BaseException:
            self._teardown()
            raise

    def _launch(self) -> None:
        self.config.log_dir.mkdir(parents=True, exist_ok=True)
        self._tmp = owned_tempdir("rig-vm-")
        paths = RuntimePaths.under(self._tmp)
        self.command = qemu_command(self.config, paths)
        (self.config.log_dir / "qemu-cmdline.txt").write_text(shlex.join(self.command) + "\n")
        self._console = SerialConsole(paths.console_socket, self.config.log_dir / "console.log")
        self._watch = watch = Watch(self._console, self.config.hang_after)
        watch.on_failure(self._console.abort)
        qmp_listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            qmp_listener.bind(str(paths.qmp_socket))
            qmp_listener.listen(1)
            self._stderr = PipeLog(self.stderr_log, STDERR_LIMIT, "qemu-stderr.log")
            self.times.launched = time.monotonic()
            try:
                self._proc = subprocess.Popen(
                    [*die_with_parent(), *on_cpu(self.config.cpu), *self.command],
                    stdin=subprocess.DEVNULL,
                    stdout=self._stderr.write_fd,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            finally:
                self._stderr.started()
            qmp_conn = self._await_connections(qmp_listener)
        finally:
            qmp_listener.close()
        watch.process("QEMU", self._proc.pid, self._qemu_fate)
        for name, pid, fate in self._watched:
            watch.process(name, pid, fate)
        watch.start()
        self._qmp = Monitor(qmp_conn, self.config.log_dir / "qmp.log")
        try:
            self._qmp.negotiate(self.launch_timeout)
            self._ssh_port = parse_usernet_port(self._qmp.human("info usernet"))
        except MachineError as e:
            # QEMU connects its chardevs before it checks the rest of its command line, so a
            # bad option shows up here as a lost QMP connection: report QEMU's own words.
            with contextlib.suppress(subprocess.TimeoutExpired):
                status = self._proc.wait(timeout=2)
                raise self._launch_error(f"QEMU exited during launch (status {status})") from e
            raise

    def _await_connections(self, qmp_listener: socket.socket) -> socket.socket:
        """Accept QEMU's QMP and console connections, or fail as soon as QEMU exits."""
        assert self._proc is not None and self._console is not None
        pidfd = os.pidfd_open(self._proc.pid)
        qmp_conn: socket.socket | None = None
        console_open = False
        deadline = time.monotonic() + self.launch_timeout
        try:
            while qmp_conn is None or not console_open:
                waiting: list[socket.socket | int] = [pidfd]
                if qmp_conn is None:
                    waiting.append(qmp_listener)
                if not console_open:
                    waiting.append(self._console.listener)
                remaining = deadline - time.monotonic()
                readable = (
                    select.select(waiting, [], [], max(remaining, 0))[0] if remaining > 0 else []
                )
                if not readable:
                    raise self._launch_error(
                        f"QEMU did not connect within {self.launch_timeout:.0f} s"
                    )
                if pidfd in readable:
                    raise self._launch_error(
                        f"QEMU exited during launch (status {self._proc.wait()})"
                    )
                if qmp_listener in readable:
                    qmp_conn, _ = qmp_listener.accept()
                if self._console.listener in readable:
                    self._console.accept()
                    console_open = True
        finally:
            os.close(pidfd)
        return qmp_conn

    def _launch_error(self, what: str) -> MachineError:
        self._flush_stderr()
        return MachineError(
            f"{what}: {shlex.join(self.command)}", self.stderr_log, tail(self.stderr_log)
        )

    def _flush_stderr(self) -> None:
        """Wait until everything an exited QEMU wrote is in its stderr log."""
        if self._stderr is not None and self._proc is not None and self._proc.poll() is not None:
            self._stderr.flushed()

    def _qemu_fate(self) -> RigError:
        """What QEMU's exit means: the guest's console says if its kernel panicked."""
        assert self._proc is not None and self._console is not None
        status = self._proc.wait()
        self._console.wait_closed(2.0)  # the last lines QEMU wrote are the kernel's report
        console, text = self._console, self._console.text
        if (reason := panic_reason(text)) is not None:
            report = report_from(text, PANIC)
            return GuestPanic(f"guest kernel panic: {reason}", console.log_path, report)
        if (line := oops_line(text)) is not None:
            report = report_from(text, OOPS)
            return GuestOops(f"guest kernel oops: {line}", console.log_path, report)
        self._flush_stderr()
        how = f"signal {signal.Signals(-status).name}" if status < 0 else f"status {status}"
        return QemuExited(
            f"QEMU exited unexpectedly ({how}; console log: {console.log_path})",
            self.stderr_log,
            tail(self.stderr_log, 10),
        )

    # -- the running guest ------------------------------------------------------------------

    def wait_ready(self, timeout: float = 120.0) -> GuestSsh:
        """Wait for the guest's readiness line, then connect SSH (retrying until `timeout`)."""
        console = self.console
        deadline = time.monotonic() + timeout
        try:
            console.wait_for(READY, timeout)
        except MachineError as e:
            raise self._with_stderr(e) from e
        self.times.ready = time.monotonic()
        self._note_console_times()
        return self._connect_ssh(deadline)

    def _connect_ssh(self, deadline: float) -> GuestSsh:
        """Connect SSH to the running guest, retrying until `deadline`."""
        console = self.console
        timeout = deadline - time.monotonic()
        last: MachineError | None = None
        watch = self.watch
        while time.monotonic() < deadline:
            if watch.failure is not None:
                raise watch.failure
            try:
                ssh = GuestSsh.connect(
                    "127.0.0.1",
                    self.ssh_port,
                    self.config.ssh,
                    timeout=max(deadline - time.monotonic(), 1.0),
                )
            except SshRefused:
                raise
            except MachineError as e:
                last = e
            else:
                self.times.ssh = time.monotonic()
                ssh.on_lost = watch.explain
                watch.on_failure(_aborts(ssh))
                watch.probe_with(ssh.answers)
                self._ssh = ssh
                return ssh
            # A refused first attempt is retried shortly; QEMU exiting ends the wait at once.
            assert self._proc is not None
            with contextlib.suppress(subprocess.TimeoutExpired):
                status = self._proc.wait(timeout=0.2)
                raise MachineError(
                    f"QEMU exited (status {status}) before SSH came up",
                    console.log_path,
                    console.tail(),
                )
        raise MachineError(
            f"guest ready but SSH failed within {timeout:.0f} s: {last}",
            console.log_path,
            console.tail(),
        )

    def drop_ssh(self) -> None:
        """Close the SSH session (before a save: a restored guest has no peer for it)."""
        if self._ssh is not None:
            self.watch.stop_probing()
            self._ssh.close()
            self._ssh = None

    def pause(self) -> None:
        """Stop the vCPU (QMP stop) of a VM nobody uses for a while: an idle guest still
        runs its timers (on warp, mlx4_en's statistics at 20x: ~0.2 of a host core), a
        stopped one costs nothing, and its clock does not move, so it sees no gap. The hang
        check rests meanwhile: a stopped guest answers no keepalive."""
        if self.paused:
            return
        self.watch.stop_probing()
        self.qmp.command("stop")
        self.paused = True

    def resume(self) -> None:
        """Run a pause()d VM again, with the hang check."""
        if not self.paused:
            return
        self.qmp.command("cont")
        self.paused = False
        if self._ssh is not None:
            self.watch.probe_with(self._ssh.answers)

    def save(self, state: Path, timeout: float = 300.0) -> None:
        """Stop the guest and write its whole state (RAM and devices) to `state`; the VM
        stays paused. No SSH session survives a restore: drop_ssh() first."""
        qmp = self.qmp
        qmp.command("stop")
        qmp.command("migrate-set-capabilities", capabilities=_save_capabilities())
        qmp.command("migrate-set-parameters", **{"max-bandwidth": SAVE_BANDWIDTH})
        qmp.command("migrate", uri=f"file:{state}")
        self._await_migration(timeout)

    def restore(self, state: Path, timeout: float = 120.0) -> GuestSsh:
        """Load `state` (Machine.save) into a VM launched with `incoming`, run it and connect
        SSH. MachineError if QEMU refuses the state (a corrupt or foreign file)."""
        deadline = time.monotonic() + timeout
        qmp = self.qmp
        qmp.command("migrate-set-capabilities", capabilities=_save_capabilities())
        qmp.command("migrate-incoming", uri=f"file:{state}")
        self._await_migration(timeout)
        # The state was saved paused (Machine.save): it comes back paused.
        qmp.command("cont")
        self.times.ready = time.monotonic()
        return self._connect_ssh(deadline)

    def _await_migration(self, timeout: float) -> None:
        event = self.qmp.wait_event(
            "MIGRATION", lambda data: data.get("status") in ("completed", "failed"), timeout
        )
        if event["data"]["status"] != "completed":
            info = self.qmp.command("query-migrate")
            raise self._with_stderr(
                MachineError(
                    f"QEMU could not move the VM's state: {info.get('error-desc', info)}",
                    self.config.log_dir / "qmp.log",
                )
            )

    def hotplug(self, index: int, socket_path: Path) -> None:
        """Plug the vfio-user card `cx<index>` into the free root port (hotplug_slot)."""
        device = json.loads(vfio_user_device(index, socket_path, self.config))
        self.qmp.command("device_add", bus=HOTPLUG_BUS, **device)

    def _note_console_times(self) -> None:
        lines = self.console.lines()
        if lines:
            self.times.first_output = lines[0][0]
        self.times.kernel_done = next((t for t, line in lines if KERNEL_DONE.search(line)), None)

    def _with_stderr(self, error: MachineError) -> MachineError:
        self._flush_stderr()
        stderr = tail(self.stderr_log, 10)
        extra = f"\n--- QEMU stderr ({self.stderr_log}) ---\n{stderr}" if stderr.strip() else ""
        return type(error)(str(error.args[0]), error.log, error.tail + extra)

    # -- shutdown ---------------------------------------------------------------------------

    def shutdown(self, timeout: float = 30.0, graceful: bool = True) -> None:
        """Power the guest off (via SSH) when `graceful`, the VM has not failed and its disk
        is its own (rootfs_writable: its writes must reach the file), then QMP quit, SIGTERM,
        SIGKILL; clean up always. A guest on a throw-away overlay has nothing to flush: it is
        quit at once (its power-off, mlx4's shutdown under TCG, cost a rig ~0.3 s)."""
        try:
            if (
                graceful
                and self.config.rootfs_writable
                and self.failure is None
                and self.is_running()
                and self._ssh is not None
            ):
                self._poweroff(timeout)
        finally:
            self._teardown()

    def _poweroff(self, timeout: float) -> None:
        assert self._proc is not None and self._ssh is not None
        try:
            self._ssh.run("rig-poweroff", timeout=10)
        except RigError:
            return  # the guest did not take the request: fall through to QMP quit
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(timeout=timeout)

    def _teardown(self) -> None:
        """Make sure QEMU is gone and every connection, socket and temp file with it."""
        if self._watch is not None:
            self._watch.stop()  # what follows is expected: nothing more to judge
        if self._ssh is not None:
            self._ssh.close()
            self._ssh = None
        if self._proc is not None:
            try:
                self._stop_qemu()
            finally:
                self.exit_status = self._proc.poll()
        if self._qmp is not None:
            self._qmp.close()
            self._qmp = None
        if self._console is not None:
            self._console.close()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def _stop_qemu(self) -> None:
        proc = self._proc
        assert proc is not None
        stopped = (ident := Identity.of(proc.pid)) is not None and ident.state() == "T"
        if proc.poll() is None and self._qmp is not None and not stopped:
            # QEMU blocked on a device model that does not answer cannot take the command.
            self._qmp.settimeout(QUIT_TIMEOUT)
            with contextlib.suppress(MachineError):
                self._qmp.command("quit")
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, None)):
            if proc.poll() is not None:
                return
            if stopped and sig == signal.SIGTERM:
                continue  # a stopped process only takes SIGKILL
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=grace)

    def __enter__(self) -> Machine:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # After an error (or Ctrl-C) do not wait for a graceful power-off.
        if exc is None:
            self.shutdown()
        else:
            self._teardown()


def _save_capabilities() -> list[dict[str, object]]:
    return [{"capability": c, "state": True} for c in SAVE_CAPABILITIES]


def _aborts(ssh: GuestSsh) -> Callable[[RigError], None]:
    """A watch's abort for this connection: drop it."""
    return lambda failure: ssh.abort()
