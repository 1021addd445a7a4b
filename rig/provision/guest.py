"""Everything a guest boots from, provisioned together: kernel, initramfs, root fs, SSH keys."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .initramfs import ensure_initramfs
from .kernel import GuestKernel, KernelSpec, ensure_kernel
from .rootfs import RootFs, ensure_rootfs
from .sshkeys import ClientKey, ensure_client_key


@dataclass(frozen=True)
class GuestImage:
    kernel: GuestKernel
    initrd: Path
    rootfs: RootFs
    client_key: ClientKey


def ensure_guest(kernel: str | KernelSpec | None = None) -> GuestImage:
    """Provision (or reuse from the cache) the guest for `kernel` (see ensure_kernel)."""
    guest_kernel = ensure_kernel(kernel)
    return GuestImage(guest_kernel, ensure_initramfs(guest_kernel), ensure_rootfs(),
                      ensure_client_key())
