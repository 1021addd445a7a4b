"""How a QEMU attaches a vfio-user device server, and whether a given QEMU can.

QEMU's client is `-device vfio-user-pci` (QEMU >= 10.1). The device's DMA reaches guest RAM
through file descriptors the client sends, so guest RAM must be a shared memfd backend.
"""

from __future__ import annotations

import functools
import json
import re
import subprocess
from pathlib import Path

MIN_VERSION = (10, 1)
DEVICE = "vfio-user-pci"


# mlx4-rig's QEMU patches (rig/provision/qemu-patches): posted writes although a region is
# mapped; posted writes of one config dword the device only latches, and of BAR0 bytes it
# only latches; the BARs mapped again after an INTx once the guest has answered it (as
# vfio-pci's own property of that name); the MSIs a device signals while it answers a BAR
# access delivered before the vCPU runs on.
POSTED_WITH_MMAP = "x-posted-writes-with-mmap"
POSTED_CONFIG_DWORD = "x-posted-config-dword"
POSTED_BAR0_OFFSET = "x-posted-bar0-offset"
POSTED_BAR0_SIZE = "x-posted-bar0-size"
INTX_MMAP_TIMEOUT = "x-intx-mmap-timeout-ms"
IRQS_AFTER_ACCESS = "x-irqs-after-access"


def device_arg(
    socket_path: Path | str,
    dev_id: str = "cx0",
    posted: bool = False,
    config_dword: int = 0,
    intx_remap_ms: int = 0,
    bar0_latched: tuple[int, int] | None = None,
    irqs_after_access: bool = False,
) -> str:
    """`-device`'s value: JSON, so a socket path needs no escaping. `posted`: the device
    promises that no write changes a mapped region, so QEMU may post writes (a QEMU with
    POSTED_WITH_MMAP only: see posts_with_mmap). `config_dword`: the offset of a config dword
    the device only latches on a write, which QEMU may post (POSTED_CONFIG_DWORD; 0: none).
    `intx_remap_ms`: INTX_MMAP_TIMEOUT (0: QEMU's default, which for vfio-user-pci is never:
    after the first INTx every BAR access traps). `bar0_latched`: (offset, size) of BAR0
    bytes the device only latches on a write, which QEMU may post (POSTED_BAR0_OFFSET).
    `irqs_after_access`: the MSIs the device signals while it answers a BAR access reach
    the guest before the vCPU runs on (IRQS_AFTER_ACCESS), not when QEMU's main loop next
    reads their eventfds."""
    arg: dict[str, object] = {
        "driver": DEVICE,
        "id": dev_id,
        "socket": {"path": str(socket_path), "type": "unix"},
    }
    if posted:
        arg[POSTED_WITH_MMAP] = True
    if config_dword:
        arg[POSTED_CONFIG_DWORD] = config_dword
    if intx_remap_ms:
        arg[INTX_MMAP_TIMEOUT] = intx_remap_ms
    if bar0_latched is not None:
        arg[POSTED_BAR0_OFFSET], arg[POSTED_BAR0_SIZE] = bar0_latched
    if irqs_after_access:
        arg[IRQS_AFTER_ACCESS] = True
    return json.dumps(arg, separators=(",", ":"))


def posts_with_mmap(binary: Path) -> bool:
    """Whether this QEMU's vfio-user-pci has POSTED_WITH_MMAP."""
    return POSTED_WITH_MMAP in _device_help(binary)


def posts_config_dword(binary: Path) -> bool:
    """Whether this QEMU's vfio-user-pci has POSTED_CONFIG_DWORD."""
    return POSTED_CONFIG_DWORD in _device_help(binary)


def posts_bar0_window(binary: Path) -> bool:
    """Whether this QEMU's vfio-user-pci has POSTED_BAR0_OFFSET."""
    return POSTED_BAR0_OFFSET in _device_help(binary)


def remaps_after_intx(binary: Path) -> bool:
    """Whether this QEMU's vfio-user-pci has INTX_MMAP_TIMEOUT."""
    return INTX_MMAP_TIMEOUT in _device_help(binary)


def delivers_irqs_after_access(binary: Path) -> bool:
    """Whether this QEMU's vfio-user-pci has IRQS_AFTER_ACCESS."""
    return IRQS_AFTER_ACCESS in _device_help(binary)


@functools.cache
def _device_help(binary: Path) -> str:
    """`-device vfio-user-pci,help`: the device's properties ("" if QEMU cannot say)."""
    try:
        return subprocess.run(
            [str(binary), "-device", f"{DEVICE},help"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def shared_memory_args(size: str) -> list[str]:
    """Guest RAM the device server can map: a shared memfd backend, `size` as for -m."""
    return [
        "-object",
        f"memory-backend-memfd,id=mem,size={size},share=on",
        "-machine",
        "memory-backend=mem",
    ]


def attach_args(socket_path: Path | str, memory: str, dev_id: str = "cx0") -> list[str]:
    """Everything a QEMU command line needs to attach the device (with -m `memory`)."""
    return [*shared_memory_args(memory), "-m", memory, "-device", device_arg(socket_path, dev_id)]


def check_qemu(binary: Path | str) -> str | None:
    """Why `binary` cannot attach a vfio-user device, or None if it can."""
    try:
        version = subprocess.run(
            [str(binary), "--version"], capture_output=True, text=True, timeout=30, check=False
        ).stdout
        devices = subprocess.run(
            [str(binary), "-device", "help"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        ).stdout
    except (OSError, subprocess.SubprocessError) as e:
        return f"cannot run {binary}: {e}"
    m = re.search(r"version (\d+)\.(\d+)", version)
    if m is None:
        return f"{binary} --version does not name a QEMU version"
    found = (int(m.group(1)), int(m.group(2)))
    if found < MIN_VERSION:
        need = ".".join(map(str, MIN_VERSION))
        return f"{binary} is QEMU {found[0]}.{found[1]}; {DEVICE} needs QEMU >= {need}"
    if f'"{DEVICE}"' not in devices:
        return f"{binary} has no {DEVICE} device (built without vfio-user?)"
    return None
