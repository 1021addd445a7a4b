"""The per-kernel initramfs: static busybox, the modules that mount root, and the kernel's
whole modules tree, which stage 1 binds into the root fs at /lib/modules/<release>.

Keeping modules out of the shared root image lets any kernel (Debian's or a user's) boot it.
The whole tree costs about 0.8 s of boot under TCG for Debian's 91 MiB cloud tree; a tree
over FULL_TREE_LIMIT (e.g. a user's with debug info) is cut to the modules the guest needs.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
from pathlib import Path

from rig.cache import cache_root, entry, file_digest, tree_listing
from rig.errors import ProvisionError
from rig.progress import step
from rig.provision import debs
from rig.provision.cpio import CpioWriter
from rig.provision.guestfiles import digests, guest_file
from rig.provision.kernel import GUEST_MODULES, GuestKernel
from rig.provision.kmod import ModuleIndex
from rig.provision.locking import building

logger = logging.getLogger(__name__)

# Bump when the layout changes in a way the inputs do not show.
RECIPE = 1
BUSYBOX_PACKAGE = "busybox-static"
# What stage 1 loads: the root disk's modules, and virtio_net, since static busybox's insmod
# costs far less under TCG than rig-init's dynamically linked modprobe (built-ins skipped).
BOOT_MODULES = ["virtio_pci", "virtio_blk", "ext4", "virtio_net"]
FULL_TREE_LIMIT = 256 << 20
IMAGE = "initrd.cpio"
# depmod's indexes, which the guest's modprobe reads; kept even in a cut-down tree.
INDEX_PREFIX = "modules."


def ensure_initramfs(kernel: GuestKernel) -> Path:
    """The initramfs for `kernel` (uncompressed cpio: TCG decompresses slower than it copies)."""
    log = cache_root() / "logs" / "initramfs.log"
    busybox, busybox_version = ensure_busybox(log)
    inputs = {
        "recipe": RECIPE,
        "kernel": kernel_fingerprint(kernel),
        "busybox": busybox_version,
        "guest_files": digests(("initramfs-init",)),
        "boot_modules": BOOT_MODULES,
        "full_tree_limit": FULL_TREE_LIMIT,
    }
    e = entry("initramfs", kernel.release, inputs)
    with building(e) as missing:
        if missing:
            with step(f"building the initramfs for {kernel.release}"), e.build() as stage:
                write_initramfs(stage / IMAGE, kernel, busybox)
    return e.path / IMAGE


def kernel_fingerprint(kernel: GuestKernel) -> str:
    """Identity of a kernel and its modules: a Debian package is named by its version, a
    user's build by its bytes (image digest, and each module's path, size and mtime)."""
    if kernel.origin.startswith("debian:"):
        return kernel.origin
    h = hashlib.sha256(file_digest(kernel.vmlinuz).encode())
    for line in tree_listing(kernel.modules_dir):
        h.update(line)
    return f"user:{h.hexdigest()[:16]}"


def ensure_busybox(log: Path) -> tuple[Path, str]:
    """Debian's static busybox binary (stage 1 has no libc to link against)."""
    version = debs.require_candidate(BUSYBOX_PACKAGE, log)
    e = entry(
        "busybox", f"{BUSYBOX_PACKAGE}_{version}", {"package": BUSYBOX_PACKAGE, "version": version}
    )
    with building(e) as missing:
        if missing:
            with step(f"fetching {BUSYBOX_PACKAGE}={version}"), e.build() as stage:
                deb = debs.download(BUSYBOX_PACKAGE, version, stage / "deb", log)
                debs.unpack(deb, stage / "tree", log)
                (stage / "tree" / "bin" / "busybox").rename(stage / "busybox")
                shutil.rmtree(stage / "deb")
                shutil.rmtree(stage / "tree")
    return e.path / "busybox", version


def tree_size(directory: Path) -> int:
    return sum((Path(d) / f).lstat().st_size for d, _, files in os.walk(directory) for f in files)


def write_initramfs(out: Path, kernel: GuestKernel, busybox: Path) -> None:
    index = ModuleIndex.load(kernel.modules_dir)
    boot_modules = index.load_order(BOOT_MODULES)
    applets = subprocess.run(
        [busybox, "--list"], capture_output=True, text=True, check=False
    ).stdout.split()
    if "switch_root" not in applets or "insmod" not in applets:
        raise ProvisionError(f"{busybox} does not look like a full static busybox")
    modules = f"lib/modules/{kernel.release}"
    with out.open("wb") as f:
        cpio = CpioWriter(f)
        for d in (
            "bin",
            "sbin",
            "dev",
            "proc",
            "sys",
            "newroot",
            "etc",
            "etc/rig",
            "lib",
            "lib/modules",
        ):
            cpio.directory(d)
        # The kernel opens /dev/console for /init before devtmpfs is mounted.
        cpio.char_device("dev/console", 5, 1)
        cpio.file("bin/busybox", busybox.read_bytes(), 0o755)
        for applet in applets:
            if applet != "busybox":
                cpio.symlink(f"bin/{applet}", "busybox")
        # The kernel's request_module() calls /sbin/modprobe (e.g. crc32c for ext4).
        cpio.symlink("sbin/modprobe", "/bin/busybox")
        cpio.file("init", guest_file("initramfs-init").read_bytes(), 0o755)
        cpio.file("etc/rig/boot-modules", "".join(f"{m}\n" for m in boot_modules).encode())
        if tree_size(kernel.modules_dir) <= FULL_TREE_LIMIT:
            cpio.tree(modules, kernel.modules_dir)
        else:
            logger.info(
                f"{kernel.modules_dir} is over {FULL_TREE_LIMIT >> 20} MiB: the initramfs "
                f"gets only {', '.join(GUEST_MODULES)} and their dependencies"
            )
            _module_subset(
                cpio,
                modules,
                kernel.modules_dir,
                boot_modules + index.load_order(list(GUEST_MODULES)),
            )
        cpio.close()


def _module_subset(cpio: CpioWriter, prefix: str, source: Path, files: list[str]) -> None:
    cpio.directory(prefix)
    made = {prefix}
    for name in sorted(p.name for p in source.iterdir()):
        if name.startswith(INDEX_PREFIX) and (source / name).is_file():
            cpio.file(f"{prefix}/{name}", (source / name).read_bytes())
    for rel in sorted(set(files)):
        parts = rel.split("/")
        for i in range(1, len(parts)):
            d = "/".join([prefix, *parts[:i]])
            if d not in made:
                cpio.directory(d)
                made.add(d)
        cpio.file(f"{prefix}/{rel}", (source / rel).read_bytes())
