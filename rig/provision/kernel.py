"""The guest kernel: Debian's packaged 6.1 (cloud flavour by default) or a user's own build.

Debian's cloud-amd64 flavour reaches init about three times faster than the generic one under
TCG (fewer drivers probing hardware the guest does not have) and still ships mlx4_core.
"""

from __future__ import annotations

import gzip
import json
import logging
import lzma
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from rig.cache import cache_root, entry
from rig.errors import ProvisionError
from rig.progress import run_logged, step
from rig.provision import debs
from rig.provision.kbuildspec import BuildSpec, is_build_spec, parse_build_spec
from rig.provision.kmod import ModuleIndex, bzimage_release, config_value
from rig.provision.locking import building

logger = logging.getLogger(__name__)

# Bump when what an entry holds changes in a way its package name and version do not show.
RECIPE = 1
DEFAULT_FLAVOUR = "cloud-amd64"
FALLBACK_FLAVOUR = "amd64"
# Modules the guest needs, loadable or built in: mounting root, the network, the driver.
GUEST_MODULES = ("virtio_pci", "virtio_blk", "virtio_net", "ext4", "mlx4_core")
# The string crdump support puts into mlx4_core (its devlink region code and messages).
CRDUMP_MARKER = b"crdump"
INFO_FILE = "kernel.json"


@dataclass(frozen=True)
class GuestKernel:
    vmlinuz: Path
    modules_dir: Path  # .../lib/modules/<release>
    release: str
    origin: str  # "debian:<package>=<version>", "build:<source>[+<patches>]" or "user:<path>"


@dataclass(frozen=True)
class KernelSpec:
    """Where the guest kernel comes from: a Debian package (None = newest default), files, or
    a build from source (rig.provision.kbuild)."""

    package: str | None = None
    version: str | None = None
    bzimage: Path | None = None
    modules_dir: Path | None = None
    build: BuildSpec | None = None

    @classmethod
    def from_paths(cls, bzimage: Path, modules_dir: Path) -> KernelSpec:
        return cls(bzimage=bzimage.resolve(), modules_dir=modules_dir.resolve())

    @classmethod
    def parse(cls, text: str | None) -> KernelSpec:
        """None -> Debian default; "deb:<package>[=<version>]"; "build:<source>[+<patches>]"
        (see rig.provision.kbuildspec); or a kernel directory."""
        if text is None or text in ("", "default", "deb:"):
            return cls()
        if is_build_spec(text):
            return cls(build=parse_build_spec(text))
        if text.startswith("deb:"):
            package, _, version = text[4:].partition("=")
            return cls(package=package, version=version or None)
        return cls.from_directory(Path(text))

    @classmethod
    def from_directory(cls, directory: Path) -> KernelSpec:
        """A directory holding bzImage (or vmlinuz[-*]) and lib/modules/<release>/."""
        if not directory.is_dir():
            raise ProvisionError(f"kernel spec {directory}: not a directory (nor deb:<package>)")
        images = [p for p in ("bzImage", "vmlinuz") if (directory / p).is_file()]
        found = [directory / images[0]] if images else sorted(directory.glob("vmlinuz-*"))
        if len(found) != 1:
            raise ProvisionError(
                f"{directory}: expected one bzImage or vmlinuz, found {len(found)}"
            )
        releases = sorted((directory / "lib" / "modules").glob("*/modules.dep"))
        if len(releases) != 1:
            raise ProvisionError(
                f"{directory}: expected one lib/modules/<release>/ with modules.dep "
                f"(make modules_install INSTALL_MOD_PATH={directory}), found {len(releases)}"
            )
        return cls.from_paths(found[0], releases[0].parent)


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
        return _debian_kernel(spec.package, spec.version)
    log = cache_root() / "logs" / "kernel.log"
    try:
        return _debian_kernel(_newest_package(DEFAULT_FLAVOUR, log), None)
    except _LacksDriver as e:
        logger.info(f"{e}; falling back to the generic {FALLBACK_FLAVOUR} flavour")
        return _debian_kernel(_newest_package(FALLBACK_FLAVOUR, log), None)


class _LacksDriver(ProvisionError):
    """The kernel has no usable mlx4_core: a different flavour may have it."""


def package_pattern(flavour: str) -> re.Pattern[str]:
    # linux-image-6.1.0-56-cloud-amd64-unsigned: vmlinuz + modules, no secure-boot signature.
    return re.compile(rf"^linux-image-6\.1\.0-(\d+)-{re.escape(flavour)}-unsigned$")


def newest_abi(names: list[str], flavour: str) -> list[str]:
    """The flavour's 6.1 image packages among `names`, newest ABI first."""
    pattern = package_pattern(flavour)
    matches = [(int(m.group(1)), n) for n in names if (m := pattern.match(n))]
    return [n for _, n in sorted(matches, reverse=True)]


def _newest_package(flavour: str, log: Path) -> str:
    names = debs.package_names("linux-image-6.1.0-")
    if not newest_abi(names, flavour):
        debs.require_candidate(f"linux-image-{flavour}", log)  # refreshes stale/missing lists
        names = debs.package_names("linux-image-6.1.0-")
    for name in newest_abi(names, flavour):
        if debs.candidate_version(name) is not None:
            return name
    raise ProvisionError(f"apt offers no linux-image-6.1.0-*-{flavour}-unsigned package", log)


def _debian_kernel(package: str, version: str | None) -> GuestKernel:
    log = cache_root() / "logs" / "kernel.log"
    version = version or debs.require_candidate(package, log)
    e = entry(
        "kernel", f"{package}_{version}", {"package": package, "version": version, "recipe": RECIPE}
    )
    with building(e) as missing:
        if missing:
            with step(f"fetching guest kernel {package}={version}"), e.build() as stage:
                _unpack_kernel(package, version, stage, log)
                kernel = _read_entry(stage)
                check_kernel(kernel, stage / "config")
    return _read_entry(e.path)


def _unpack_kernel(package: str, version: str, stage: Path, log: Path) -> None:
    deb = debs.download(package, version, stage / "deb", log)
    tree = stage / "tree"
    debs.unpack(deb, tree, log)
    images = sorted((tree / "boot").glob("vmlinuz-*"))
    if len(images) != 1:
        raise ProvisionError(f"{package}: expected one boot/vmlinuz-*, found {len(images)}", log)
    release = images[0].name.removeprefix("vmlinuz-")
    modules = next(
        (
            p
            for p in (
                tree / "lib" / "modules" / release,
                tree / "usr" / "lib" / "modules" / release,
            )
            if p.is_dir()
        ),
        None,
    )
    if modules is None:
        raise ProvisionError(f"{package}: no lib/modules/{release} in the package", log)
    images[0].rename(stage / "vmlinuz")
    config = tree / "boot" / f"config-{release}"
    if config.is_file():
        config.rename(stage / "config")
    (stage / "lib" / "modules").mkdir(parents=True)
    modules.rename(stage / "lib" / "modules" / release)
    shutil.rmtree(tree)
    shutil.rmtree(stage / "deb")
    # Packages leave modules.dep to their postinst; the guest's modprobe needs it. (No -F:
    # Debian ships the real System.map only in the -dbg package.)
    run_logged(["depmod", "-b", stage, release], log, f"depmod {release}")
    (stage / INFO_FILE).write_text(
        json.dumps({"release": release, "origin": f"debian:{package}={version}"}, indent=2)
    )


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
    kernel = GuestKernel(bzimage, modules_dir, release, origin)
    check_kernel(kernel, find_config(kernel))
    return kernel


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
