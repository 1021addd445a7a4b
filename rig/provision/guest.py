"""Everything a guest boots from, provisioned together: kernel, initramfs, root fs, SSH keys."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rig.cache import cache_root
from rig.provision.apt import ensure_packages
from rig.provision.initramfs import ensure_initramfs
from rig.provision.kernel import GuestKernel, KernelSpec, ensure_kernel
from rig.provision.rootfs import RootFs, ensure_rootfs
from rig.provision.sshkeys import ClientKey, ensure_client_key

# Host tools provisioning uses (apt-get, dpkg-deb and setpriv come with any Debian system).
HOST_PACKAGES: tuple[str, ...] = (
    "mmdebstrap",  # builds the root fs
    "debian-archive-keyring",  # to verify Debian's suites (mmdebstrap, the private apt)
    "gpg",  # recommended by mmdebstrap, for its keyring handling
    "e2fsprogs",  # mke2fs -d
    "kmod",  # depmod for a packaged kernel's modules
    "openssh-client",  # ssh-keygen
    "mount",  # umount of mmdebstrap's leftovers after an interruption
)


@dataclass(frozen=True)
class GuestImage:
    kernel: GuestKernel
    initrd: Path
    rootfs: RootFs
    client_key: ClientKey


def ensure_guest(
    kernel: str | KernelSpec | None = None, userspace: str | None = None
) -> GuestImage:
    """Provision (or reuse from the cache) the guest for `kernel` (see ensure_kernel), its
    root fs from Debian release `userspace` (None: the kernel spec's own choice)."""
    spec = kernel if isinstance(kernel, KernelSpec) else KernelSpec.parse(kernel)
    ensure_packages(
        HOST_PACKAGES, cache_root() / "logs" / "host-packages.log", "guest provisioning"
    )
    guest = ensure_kernel(spec)
    rootfs = ensure_rootfs(userspace or spec.userspace)
    return GuestImage(guest, ensure_initramfs(guest), rootfs, ensure_client_key())
