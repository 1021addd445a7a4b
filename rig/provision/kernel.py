"""The guest kernel: one of Debian's packaged kernels (bookworm's 6.1 cloud flavour by
default), a user's own build, or one built from source (rig.provision.kbuild).

Debian's cloud-amd64 flavour reaches init about three times faster than the generic one under
TCG (fewer drivers probing hardware the guest does not have) and still ships mlx4_core.
Debian's kernels come through a private apt (rig.provision.debs.DebArchive), never the host's.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import lzma
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from rig.cache import cache_root, entry, tree_listing
from rig.errors import ProvisionError, UsageError
from rig.progress import run_logged, step
from rig.provision import debs, suites
from rig.provision.debkernel import IMAGE_PREFIX, KernelDebs, meta_package, resolve
from rig.provision.kbuildspec import BuildSpec, is_build_spec, parse_build_spec
from rig.provision.kmod import ModuleIndex, bzimage_release, config_value
from rig.provision.locking import building

logger = logging.getLogger(__name__)

# Bump when what an entry holds changes in a way its package names and version do not show.
RECIPE = 1
DEFAULT_FLAVOUR = "cloud-amd64"
FALLBACK_FLAVOUR = "amd64"
# Modules the guest needs, loadable or built in: mounting root, the network, the driver.
GUEST_MODULES = ("virtio_pci", "virtio_blk", "virtio_net", "ext4", "mlx4_core")
# The string crdump support puts into mlx4_core (its devlink region code and messages).
CRDUMP_MARKER = b"crdump"
INFO_FILE = "kernel.json"
# Where a kernel directory keeps its modules, and its image: a build's bzImage, an installed
# kernel's vmlinuz-<release>, or (newer Debian packages) lib/modules/<release>/vmlinuz.
MODULE_ROOTS = ("lib/modules", "usr/lib/modules")
TOP_IMAGES = ("bzImage", "vmlinuz")
IMAGE_GLOBS = ("vmlinuz-*", "boot/vmlinuz-*", "{modules}/vmlinuz", "{modules}/vmlinuz.unsigned")
# What lib/modules/<release>/ may hold besides modules that the guest never reads.
NOT_MODULES = ("vmlinuz", "vmlinuz.unsigned", "System.map", "config")
# Bump when a private copy of a user's modules (to index them) is made differently.
INDEX_RECIPE = 1


@dataclass(frozen=True)
class GuestKernel:
    vmlinuz: Path
    modules_dir: Path  # .../lib/modules/<release>
    release: str
    origin: str  # "debian:<package>=<version>[,...]", "build:<source>[+<patches>]", "user:<path>"


KERNEL_ENV = "RIG_KERNEL"  # the kernel spec of every boot that names none


@dataclass(frozen=True)
class KernelSpec:
    """Where the guest kernel comes from: a Debian suite or package (both None: the default
    suite), files, or a build from source (rig.provision.kbuild)."""

    package: str | None = None
    version: str | None = None
    bzimage: Path | None = None
    modules_dir: Path | None = None
    build: BuildSpec | None = None
    suite: str | None = None

    @classmethod
    def from_paths(cls, bzimage: Path, modules_dir: Path) -> KernelSpec:
        return cls(bzimage=bzimage.resolve(), modules_dir=modules_dir.resolve())

    @classmethod
    def parse(cls, text: str | None) -> KernelSpec:
        """None -> Debian default; "deb:<suite>"; "deb:<package>[=<version>]";
        "build:<source>[+<patches>]" (see rig.provision.kbuildspec); or a kernel directory.
        None takes $RIG_KERNEL when set: `rig coverage` points every boot of a run at its
        kernel this way, the rigs the tests start through the CLI included."""
        if text is None:
            text = os.environ.get(KERNEL_ENV) or None
        if text is None or text in ("", "default", "deb:"):
            return cls()
        if is_build_spec(text):
            return cls(build=parse_build_spec(text))
        if text.startswith("deb:"):
            name, _, version = text[4:].partition("=")
            if name in suites.SUITES and not version:
                return cls(suite=name)
            if not name.startswith(IMAGE_PREFIX):
                raise UsageError(
                    f"kernel spec {text}: {name!r} is neither a Debian suite "
                    f"({suites.known()}) nor a linux-image-* package"
                )
            return cls(package=name, version=version or None)
        return cls.from_directory(Path(text))

    @classmethod
    def from_directory(cls, directory: Path) -> KernelSpec:
        """A kernel directory (see locate_kernel); its modules.dep may be missing."""
        if not directory.is_dir():
            raise UsageError(f"kernel spec {directory}: not a directory (nor deb:<suite|package>)")
        return cls.from_paths(*locate_kernel(directory))

    @property
    def userspace(self) -> str:
        """The Debian release the guest's root fs comes from unless the user says otherwise:
        the kernel's own for deb:SUITE, else the default."""
        return suites.release_of(self.suite) if self.suite else suites.DEFAULT_SUITE


def locate_kernel(directory: Path) -> tuple[Path, Path]:
    """(image, lib/modules/<release>) in a kernel directory: `make modules_install
    INSTALL_MOD_PATH=DIR` beside a bzImage, or Debian's packages unpacked with dpkg-deb -x."""
    releases = [d for root in MODULE_ROOTS for d in sorted(directory.glob(f"{root}/*/"))]
    if len(releases) != 1:
        raise UsageError(
            f"{directory}: expected one lib/modules/<release>/ "
            f"(make modules_install INSTALL_MOD_PATH={directory}), found {len(releases)}"
        )
    modules = releases[0].relative_to(directory)
    images = [directory / n for n in TOP_IMAGES if (directory / n).is_file()][:1] or [
        p
        for g in IMAGE_GLOBS
        for p in sorted(directory.glob(g.format(modules=modules)))
        if p.is_file()
    ]
    if len(images) != 1:
        found = ", ".join(str(p.relative_to(directory)) for p in images) or "none"
        raise UsageError(
            f"{directory}: expected one kernel image (bzImage, vmlinuz, boot/vmlinuz-* or "
            f"{modules}/vmlinuz), found {found}"
        )
    return images[0], releases[0]


def ensure_kernel(spec: str | KernelSpec | None = None) -> GuestKernel:
    """The guest kernel for `spec`, fetched into the cache if it is a Debian package."""
    if not isinstance(spec, KernelSpec):
        spec = KernelSpec.parse(spec)
    if spec.build is not None:
        from rig.provision.kbuild import (
            ensure_build,  # the build machinery loads only when asked for
        )

        # A build is a kernel directory whose kernel.json names its origin.
        return ensure_kernel(KernelSpec.from_directory(ensure_build(spec.build).path))
    if spec.bzimage is not None and spec.modules_dir is not None:
        return _user_kernel(spec.bzimage, spec.modules_dir)
    if spec.package is not None:
        return _debian_kernel(suites.ALL, spec.package, spec.version)
    suite = spec.suite or suites.DEFAULT_SUITE
    try:
        return _debian_kernel(suite, meta_package(DEFAULT_FLAVOUR), None)
    except _LacksDriver as e:
        logger.info(f"{e}; falling back to the generic {FALLBACK_FLAVOUR} flavour")
        return _debian_kernel(suite, meta_package(FALLBACK_FLAVOUR), None)


class _LacksDriver(ProvisionError):
    """The kernel has no usable mlx4_core: a different flavour may have it."""


class _NotInIndex(ProvisionError):
    """The index does not list what was asked, or the mirror no longer holds a file it lists:
    a fresher index may cure it."""


def _debian_kernel(suite: str, package: str, version: str | None) -> GuestKernel:
    log = cache_root() / "logs" / "kernel.log"
    archive = debs.DebArchive(suite)
    archive.ensure_index(log)
    try:
        return _fetch_debian_kernel(archive, package, version, log)
    except _NotInIndex as e:
        age = archive.age()
        if age is not None and age < debs.INDEX_FRESH:
            raise
        logger.info(f"{e.args[0]}; fetching a newer index of {suite}")
        archive.ensure_index(log, max_age=0)
        return _fetch_debian_kernel(archive, package, version, log)


def _fetch_debian_kernel(
    archive: debs.DebArchive, package: str, version: str | None, log: Path
) -> GuestKernel:
    kernel = _resolve(archive, package, version)
    single = len(kernel.packages) == 1
    # One package keeps the key it has always had, so existing cache entries stay valid.
    inputs: dict[str, object] = (
        {"package": kernel.packages[0], "version": kernel.version, "recipe": RECIPE}
        if single
        else {"packages": list(kernel.packages), "version": kernel.version, "recipe": RECIPE}
    )
    e = entry(
        "kernel", f"{kernel.packages[0] if single else kernel.image}_{kernel.version}", inputs
    )
    with building(e) as missing:
        if missing:
            with step(f"fetching guest kernel {kernel.image}={kernel.version}"), e.build() as stage:
                _download_kernel(archive, kernel, stage / "deb", log)
                _unpack_kernel(kernel, stage, log)
                check_kernel(_read_entry(stage), stage / "config")
    return _read_entry(e.path)


def _resolve(archive: debs.DebArchive, package: str, version: str | None) -> KernelDebs:
    where = "Debian's " + ", ".join(dict.fromkeys(line.suite for line in archive.lines))
    if version is None:
        version = archive.candidate(package)
        if version is None:
            raise _NotInIndex(f"{where} list no package {package}")
    elif archive.fields(package, version) is None:
        listed = ", ".join(archive.versions(package)) or "none"
        raise _NotInIndex(f"{where} list no {package}={version} (they list: {listed})")

    def lookup(name: str, at: str) -> dict[str, str] | None:
        return archive.fields(name, at)

    return resolve(lookup, package, version)


def _download_kernel(archive: debs.DebArchive, kernel: KernelDebs, dest: Path, log: Path) -> None:
    for package in kernel.packages:
        fields = archive.fields(package, kernel.version) or {}
        size = int(fields.get("Size", "0")) / (1 << 20)
        try:
            with step(f"downloading {package}={kernel.version} ({size:.1f} MiB)"):
                archive.download(package, kernel.version, dest, log)
        except ProvisionError as e:
            raise _NotInIndex(e.args[0], e.log, e.tail) from e


def _unpack_kernel(kernel: KernelDebs, stage: Path, log: Path) -> None:
    tree = stage / "tree"
    for deb in sorted((stage / "deb").glob("*.deb")):
        debs.unpack(deb, tree, log)
    try:
        image, modules = locate_kernel(tree)
    except UsageError as e:
        raise ProvisionError(f"{kernel.origin}: {e}", log) from e
    release = modules.name
    image.rename(stage / "vmlinuz")
    for config in (tree / "boot" / f"config-{release}", modules / "config"):
        if config.is_file():
            config.rename(stage / "config")
    # The entry's modules tree goes whole into the initramfs: nothing else belongs in it.
    for name in NOT_MODULES:
        (modules / name).unlink(missing_ok=True)
    (stage / "lib" / "modules").mkdir(parents=True)
    modules.rename(stage / "lib" / "modules" / release)
    shutil.rmtree(tree)
    shutil.rmtree(stage / "deb")
    index_modules(stage, release, log)
    (stage / INFO_FILE).write_text(
        json.dumps({"release": release, "origin": kernel.origin}, indent=2)
    )


def index_modules(base: Path, release: str, log: Path) -> None:
    """depmod for base/lib/modules/<release> if it has no modules.dep: packages leave it to
    their postinst, and the guest's modprobe needs it. (No -F: Debian ships the real System.map
    only in the -dbg package.)"""
    if (base / "lib" / "modules" / release / "modules.dep").is_file():
        return
    run_logged(["depmod", "-b", base, release], log, f"depmod {release}")


def _read_entry(path: Path) -> GuestKernel:
    data = json.loads((path / INFO_FILE).read_text())
    release = str(data["release"])
    return GuestKernel(
        path / "vmlinuz", path / "lib" / "modules" / release, release, str(data["origin"])
    )


def _user_kernel(bzimage: Path, modules_dir: Path) -> GuestKernel:
    for p in (bzimage, modules_dir):
        if not p.exists():
            raise ProvisionError(f"user kernel: {p} does not exist")
    release = modules_dir.name
    announced = bzimage_release(bzimage.read_bytes()[: 1 << 16])
    if announced is not None and announced != release:
        raise ProvisionError(
            f"user kernel: {bzimage} is release {announced} but the modules "
            f"are for {release} ({modules_dir})"
        )
    origin = _recorded_origin(bzimage.parent) or f"user:{bzimage}"
    indexed = (
        modules_dir if (modules_dir / "modules.dep").is_file() else indexed_modules(modules_dir)
    )
    kernel = GuestKernel(bzimage, indexed, release, origin)
    check_kernel(kernel, find_config(kernel))
    return kernel


def indexed_modules(modules_dir: Path) -> Path:
    """A private copy of a user's modules tree that lacks modules.dep, with depmod run on the
    copy: the user's directory is only read. Keyed by the tree's paths, sizes and mtimes."""
    release = modules_dir.name
    listing = b"".join(tree_listing(modules_dir))
    e = entry(
        "modules", release, {"tree": hashlib.sha256(listing).hexdigest(), "recipe": INDEX_RECIPE}
    )
    log = cache_root() / "logs" / "kernel.log"
    with building(e) as missing:
        if missing:
            with (
                step(f"indexing a copy of {modules_dir} (it has no modules.dep)"),
                e.build() as stage,
            ):
                copy = stage / "lib" / "modules" / release
                shutil.copytree(
                    modules_dir,
                    copy,
                    symlinks=True,
                    ignore=lambda d, names: NOT_MODULES if Path(d) == modules_dir else (),
                )
                index_modules(stage, release, log)
    return e.path / "lib" / "modules" / release


def _recorded_origin(directory: Path) -> str | None:
    """The origin a cache entry (a Debian kernel, a rig build) records for itself, so that
    passing its directory as --kernel still says where the kernel came from."""
    try:
        return str(json.loads((directory / INFO_FILE).read_text())["origin"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def find_config(kernel: GuestKernel) -> Path | None:
    """The kernel's .config, where a Debian entry or a kernel build tree usually keeps it."""
    here = kernel.vmlinuz.parent
    candidates = [
        here / "config",
        here / ".config",
        here / f"config-{kernel.release}",
        here / "boot" / f"config-{kernel.release}",
        kernel.modules_dir / "build" / ".config",
        *(p / ".config" for p in list(here.parents)[:4]),
    ]
    return next((p for p in candidates if p.is_file()), None)


def check_kernel(kernel: GuestKernel, config: Path | None) -> None:
    """Fail clearly now rather than with a guest that cannot mount root or probe the device."""
    index = ModuleIndex.load(kernel.modules_dir)
    missing = [
        m
        for m in GUEST_MODULES
        if not index.has(m)
        or (m in index.paths and not (kernel.modules_dir / index.paths[m]).is_file())
    ]
    if "mlx4_core" in missing:
        raise _LacksDriver(f"guest kernel {kernel.origin} has no mlx4_core module")
    if missing:
        raise ProvisionError(f"guest kernel {kernel.origin} lacks modules: {', '.join(missing)}")
    if "mlx4_core" not in index.paths:
        raise ProvisionError(
            f"guest kernel {kernel.origin}: mlx4_core is built in; the rig "
            "loads it as a module to choose its parameters"
        )
    ko = kernel.modules_dir / index.paths["mlx4_core"]
    if CRDUMP_MARKER not in read_module(ko):
        raise _LacksDriver(f"guest kernel {kernel.origin}: {ko.name} has no crdump support")
    if config is not None:
        devlink = config_value(config.read_text(errors="replace"), "NET_DEVLINK")
        if devlink != "y":
            raise ProvisionError(
                f"guest kernel {kernel.origin}: CONFIG_NET_DEVLINK={devlink} "
                f"in {config}; devlink must be built in"
            )
    # Without a config, mlx4_core's presence implies devlink: MLX4_CORE selects NET_DEVLINK.


def read_module(ko: Path) -> bytes:
    """A module file's bytes, decompressed if the kernel installs compressed modules."""
    try:
        return _decompressed(ko)
    except (OSError, lzma.LZMAError, gzip.BadGzipFile) as e:
        raise ProvisionError(f"cannot read module {ko}: {e}") from e


def _decompressed(ko: Path) -> bytes:
    if ko.suffix == ".xz":
        return lzma.decompress(ko.read_bytes())
    if ko.suffix == ".gz":
        return gzip.decompress(ko.read_bytes())
    if ko.suffix == ".zst":
        try:
            return subprocess.run(["zstd", "-dc", ko], capture_output=True, check=True).stdout
        except (OSError, subprocess.CalledProcessError) as e:
            raise ProvisionError(f"cannot decompress {ko} (install zstd): {e}") from e
    return ko.read_bytes()
