"""A QEMU binary the user names (`--qemu PATH`): used as is, whatever its version.

Without vfio-user devices any QEMU that boots q35 serves (e.g. Debian 12's 7.2);
rig.provision.qemu.ensure_qemu() is the way to one that can attach the emulated device.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ..errors import ProvisionError


@dataclass(frozen=True)
class LocalQemu:
    binary: Path
    firmware_dirs: tuple[Path, ...]  # empty: the binary's own compiled-in data directory
    version: str


def qemu_at(binary: Path) -> LocalQemu:
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        raise ProvisionError(f"QEMU {binary} is not an executable file")
    try:
        out = subprocess.run([str(binary), "--version"], capture_output=True, text=True,
                             timeout=30, check=True, stdin=subprocess.DEVNULL).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise ProvisionError(f"cannot run {binary} --version: {e}") from e
    match = re.search(r"version\s+(\d+\.\d+(?:\.\d+)?)", out)
    if match is None:
        raise ProvisionError(f"{binary} --version printed no version: {out.strip()[:200]}")
    return LocalQemu(binary.resolve(), (), match.group(1))
