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

from rig.errors import ProvisionError

# Debian's packaged firmware (seabios, qemu-system-data, ipxe-qemu), for builds without blobs.
DEBIAN_FIRMWARE = (Path("/usr/share/seabios"), Path("/usr/share/qemu"), Path("/usr/lib/ipxe/qemu"))


@dataclass(frozen=True)
class LocalQemu:
    binary: Path
    firmware_dirs: tuple[Path, ...]  # empty: the binary finds its own data directory
    version: str


def firmware_for(binary: Path) -> tuple[Path, ...]:
    """-L dirs for `binary`: none if its installation has a BIOS (QEMU looks in
    <prefix>/share/qemu by itself), else Debian's firmware directories."""
    if (binary.parent.parent / "share" / "qemu" / "bios-256k.bin").exists():
        return ()
    return tuple(d for d in DEBIAN_FIRMWARE if d.is_dir())


def qemu_at(binary: Path) -> LocalQemu:
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        raise ProvisionError(f"QEMU {binary} is not an executable file")
    try:
        out = subprocess.run(
            [str(binary), "--version"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
            stdin=subprocess.DEVNULL,
        ).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise ProvisionError(f"cannot run {binary} --version: {e}") from e
    match = re.search(r"version\s+(\d+\.\d+(?:\.\d+)?)", out)
    if match is None:
        raise ProvisionError(f"{binary} --version printed no version: {out.strip()[:200]}")
    binary = binary.resolve()
    return LocalQemu(binary, firmware_for(binary), match.group(1))
