"""The rig's errors: one tree, one line each on stderr, one exit status each.

    RigError              exit 2: the rig or its input failed
    ├── UsageError        bad arguments, a missing or malformed input file
    │   └── DumpFormatError (rig.formats.dumptext) a dump file that does not parse
    │       └── ChipError (rig.formats.mstdump) an mstregdump of another chip
    ├── ProvisionError    fetching or building QEMU, a kernel, the root fs
    ├── MachineError      QEMU did not start, boot or answer
    │   ├── QemuExited    QEMU exited by itself while the guest ran
    │   ├── GuestPanic    the guest kernel panicked (QEMU then exits)
    │   ├── GuestOops     the guest kernel oopsed or hit a BUG
    │   ├── GuestHang     no console output and no SSH answer for N s
    │   └── SshLost       the SSH connection dropped while QEMU and the guest were up
    ├── DeviceModelError  the device model did not start, died, or refused a request
    └── KernelFailure     exit 1: the kernel under test did not do what it must (no
                          snapshot, no recovery, a snapshot unlike the device's truth)

Every command maps them the same way (rig.cli.main): 0 the kernel under test passed, 1 it
failed, 2 the rig or its input failed, 128 + N ended by signal N (rig.signals). The guest's
four fates are exit 2 too: the rig can no longer tell what the driver did. Each names the
console log, where the kernel's own report is.
"""

from __future__ import annotations

from pathlib import Path


class RigError(Exception):
    """A failure the user can act on: the message says what failed and where the log is."""

    exit_status = 2

    def __init__(self, message: str, log: Path | None = None, tail: str = "") -> None:
        self.log = log
        self.tail = tail
        super().__init__(message)

    def __str__(self) -> str:
        text = super().__str__()
        if self.log is not None:
            text += f" (full log: {self.log})"
        if self.tail:
            text += "\n--- last lines ---\n" + self.tail.rstrip()
        return text


class UsageError(RigError):
    """The command line or an input file is wrong."""


class ProvisionError(RigError):
    """Fetching or building a cached artifact (QEMU, kernel, image) failed."""


class MachineError(RigError):
    """A VM failed to launch, boot, or answer."""


class QemuExited(MachineError):
    """QEMU exited while the guest ran, and the guest's console shows no panic."""


class GuestPanic(MachineError):
    """The guest kernel panicked: its console has "Kernel panic - not syncing"."""


class GuestOops(MachineError):
    """The guest kernel oopsed or hit a BUG (and did not panic)."""


class GuestHang(MachineError):
    """The guest printed nothing on its console and answered no SSH request for too long."""


class SshLost(MachineError):
    """The SSH connection to the guest dropped while QEMU and the device model ran."""


class DeviceModelError(RigError):
    """The device model did not start, died, or refused a control request."""


class KernelFailure(RigError):
    """The kernel under test failed: the rig worked and saw the driver misbehave."""

    exit_status = 1


def tail(path: Path, lines: int = 25) -> str:
    """The last `lines` lines of a log file, or '' if it cannot be read."""
    try:
        with path.open("rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 64 * 1024))
            data = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])
