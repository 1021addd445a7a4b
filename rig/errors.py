"""Errors the rig reports to its user as one clear line (the CLI prints them, no traceback)."""

from __future__ import annotations

from pathlib import Path


class RigError(Exception):
    """A failure the user can act on: the message says what failed and where the log is."""

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


class ProvisionError(RigError):
    """Fetching or building a cached artifact (QEMU, kernel, image) failed."""


class MachineError(RigError):
    """A VM failed to launch, boot, or answer."""


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
