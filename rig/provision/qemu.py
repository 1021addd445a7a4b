"""QEMU with the `vfio-user-pci` client device (QEMU >= 10.1), found or built into the cache.

Order: $RIG_QEMU, then a system qemu-system-x86_64 that is new enough and has vfio-user-pci,
then a cached build of the pinned version, else a build of it from Debian's qemu source
package, fetched through a private apt configuration and built for x86_64-softmmu only.

The version built is pinned (PINNED_VERSION, bumped by a commit) so that the same commit
builds the same QEMU wherever it runs; `--qemu-version` asks for another one (and skips the
system's QEMU). A version that has left Debian's archive is an error naming what is there,
never a silent build of something else.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from rig.cache import MANIFEST, cache_root, entry
from rig.errors import ProvisionError, UsageError
from rig.progress import run_logged, step
from rig.provision.apt import SourceArchive, debian_version_key, ensure_packages, upstream_version
from rig.provision.localqemu import LocalQemu, qemu_at

logger = logging.getLogger(__name__)

MIN_VERSION = (10, 1, 0)
REQUIRED_DEVICE = "vfio-user-pci"
BINARY = "qemu-system-x86_64"
SOURCE_PACKAGE = "qemu"
# The qemu source the rig builds by default: Debian's version string, epoch and revision too.
PINNED_VERSION = "1:10.2.2+ds-1"
# Where a version may still be listed: sid moves on first, testing and the backports keep an
# older one a while, experimental carries the next.
SOURCE_SUITES = ("sid", "testing", "experimental", "trixie-backports")
# Bump when the build steps change in a way the configure flags do not show.
RECIPE = 1
# Our patches to Debian's source, applied in name order before configure (`patch -p1`); each
# file says why. Their contents are part of the cache key.
PATCH_DIR = Path(__file__).with_name("qemu-patches")
# At most 3 compile jobs: the machines this runs on have 2 cores shared with other work.
MAX_JOBS = 3

CONFIGURE_FLAGS: tuple[str, ...] = (
    "--target-list=x86_64-softmmu",
    # Every optional feature off unless named below, so the binary does not depend on which
    # -dev packages happen to be installed on the building host.
    "--without-default-features",
    "--enable-tcg",
    "--enable-kvm",
    "--enable-slirp",  # -netdev user with hostfwd: the rig's only way into the guest
    "--enable-pixman",  # keeps the standard display devices buildable; cheap
    # virtio-9p-pci: virtme-ng shares the host's root with the guest over 9p (virtiofs only
    # when a virtiofsd is installed). glibc's <sys/xattr.h> serves `attr`: no -dev package.
    "--enable-attr",
    "--enable-virtfs",
    "--disable-fdt",  # x86 does not need libfdt; avoids the dtc subproject
    "--disable-rust",
    "--disable-docs",
    "--disable-install-blobs",  # Debian's +ds tarball has no firmware blobs to install
    "--disable-download",  # never fetch subprojects at build time
    "--disable-werror",  # a newer QEMU on Debian 12's gcc must not fail on a new warning
    "--disable-debug-info",  # less to compile and link; we debug the device, not QEMU
    # Link-time optimisation: TCG's C side (TB lookup, softmmu, translation) is most of a
    # rig's CPU besides the generated code. Same build time here; a rig's start 5-11% less
    # QEMU CPU (docs/clock.md, "Session 15").
    "--enable-lto",
)

# Debian packages the build needs (the libraries' -dev packages pull in the runtime libraries).
BUILD_PACKAGES: tuple[str, ...] = (
    "build-essential",
    "ninja-build",
    "pkg-config",
    "python3-venv",
    "dpkg-dev",  # dpkg-source, which `apt-get source` runs to unpack and patch
    "xz-utils",
    "debian-archive-keyring",
    "libglib2.0-dev",
    "libpixman-1-dev",
    "libslirp-dev",
    "zlib1g-dev",
)
# The firmware our build does not install: SeaBIOS, the option ROMs a q35 -kernel boot loads
# (linuxboot_dma.bin, kvmvapic.bin), and iPXE's efi-virtio.rom that virtio-net-pci loads.
RUNTIME_PACKAGES: tuple[str, ...] = ("seabios", "qemu-system-data", "ipxe-qemu")
FIRMWARE_DIRS: tuple[Path, ...] = (
    Path("/usr/share/seabios"),
    Path("/usr/share/qemu"),
    Path("/usr/lib/ipxe/qemu"),
)
FIRMWARE_FILES = ("bios-256k.bin", "linuxboot_dma.bin", "kvmvapic.bin", "efi-virtio.rom")


@dataclass(frozen=True)
class Qemu:
    binary: Path  # qemu-system-x86_64
    firmware_dirs: tuple[Path, ...]  # for -L
    version: str  # e.g. "10.2.2"


# ---------------------------------------------------------------------------------------------
# Pure helpers.


def parse_version(text: str) -> tuple[int, int, int] | None:
    """(10, 2, 2) from `qemu-system-x86_64 --version` output or a version like "10.2.2+ds"."""
    m = re.search(r"(?:version\s+)?(\d+)\.(\d+)(?:\.(\d+))?", text)
    if m is None:
        return None
    return int(m[1]), int(m[2]), int(m[3] or 0)


def version_text(version: tuple[int, int, int]) -> str:
    return ".".join(map(str, version))


def is_new_enough(version: tuple[int, int, int] | None) -> bool:
    return version is not None and version >= MIN_VERSION


def lists_device(device_help: str, device: str = REQUIRED_DEVICE) -> bool:
    """Whether `-device help` output names `device` (lines look like: name "vfio-user-pci", ...)."""
    return re.search(rf'^name "{re.escape(device)}"', device_help, re.MULTILINE) is not None


def candidate_versions(debian_versions: Sequence[str]) -> list[str]:
    """Source versions whose upstream is >= MIN_VERSION, newest first (dpkg ordering)."""
    ok = [v for v in debian_versions if is_new_enough(parse_version(upstream_version(v)))]
    return sorted(set(ok), key=debian_version_key, reverse=True)


def is_version(requested: str, debian_version: str) -> bool:
    """Whether `requested` names `debian_version`: exactly ("1:10.2.2+ds-1"), without its
    epoch ("10.2.2+ds-1"), or by its upstream release ("10.2.2", any Debian revision)."""
    without_epoch = debian_version.split(":", 1)[-1]
    release = re.split(r"[+~]", upstream_version(debian_version))[0]
    return requested in (debian_version, without_epoch, release)


def check_requested(requested: str, option: str = "--qemu-version") -> None:
    """A --qemu-version the rig can use at all: QEMU >= MIN_VERSION."""
    version = parse_version(requested)
    if version is None or not is_new_enough(version):
        raise UsageError(
            f"{option} {requested}: the rig needs QEMU >= {version_text(MIN_VERSION)} "
            f"(vfio-user-pci), e.g. {PINNED_VERSION}"
        )


def meson_pin(pythondeps_toml: str) -> str:
    """The meson version QEMU itself bundles ("installed" in pythondeps.toml's [meson])."""
    data = tomllib.loads(pythondeps_toml)
    try:
        pin = data["meson"]["meson"]["installed"]
    except (KeyError, TypeError) as e:
        raise ProvisionError(f"pythondeps.toml names no [meson] meson version: {e}") from e
    if not isinstance(pin, str):
        raise ProvisionError(f"pythondeps.toml: meson version is not a string: {pin!r}")
    return pin


def build_inputs(debian_version: str) -> dict[str, object]:
    """Everything that shapes the build: the cache key of its entry."""
    return {
        "source": f"{SOURCE_PACKAGE}={debian_version}",
        "configure": list(CONFIGURE_FLAGS),
        "recipe": RECIPE,
        "patches": {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in patches()},
    }


def patches() -> list[Path]:
    return sorted(PATCH_DIR.glob("*.patch"))


def _build_inputs_of(entry_dir: Path) -> dict[str, object] | None:
    """The build inputs a cache entry's manifest records; None if it has none readable."""
    try:
        inputs = json.loads((entry_dir / MANIFEST).read_text())["inputs"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return inputs if isinstance(inputs, dict) else None


def built_with(binary: Path, patch: str) -> bool:
    """Whether `binary` is a build of this cache whose manifest lists `patch` (a file name in
    PATCH_DIR): for a fix that adds no option the binary could be asked about."""
    inputs = _build_inputs_of(binary.parent.parent)
    patches = inputs.get("patches") if inputs is not None else None
    return isinstance(patches, dict) and patch in patches


def firmware_dirs() -> tuple[Path, ...]:
    return tuple(d for d in FIRMWARE_DIRS if d.is_dir())


def missing_firmware(dirs: Sequence[Path]) -> list[str]:
    return [f for f in FIRMWARE_FILES if not any((d / f).exists() for d in dirs)]


# ---------------------------------------------------------------------------------------------
# Finding an existing QEMU (no provisioning).


def _probe(binary: Path, *args: str) -> str:
    result = subprocess.run(
        [str(binary), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    if result.returncode != 0:
        raise ProvisionError(f"{binary} {' '.join(args)} failed: {result.stderr.strip()[:300]}")
    return result.stdout


def _qualify(binary: Path) -> tuple[str | None, str]:
    """(version, '') if `binary` is usable for the rig, else (version or None, why not)."""
    try:
        version = parse_version(_probe(binary, "--version"))
        if not is_new_enough(version):
            found = version_text(version) if version else "unknown"
            return None, f"version {found} < {version_text(MIN_VERSION)}"
        assert version is not None
        if not lists_device(_probe(binary, "-machine", "none", "-device", "help")):
            return version_text(version), f"-device help does not list {REQUIRED_DEVICE}"
    except (OSError, subprocess.TimeoutExpired, ProvisionError) as e:
        return None, f"cannot run it: {e}"
    return version_text(version), ""


def _from_env() -> Qemu | None:
    value = os.environ.get("RIG_QEMU")
    if not value:
        return None
    binary = Path(value)
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        raise ProvisionError(f"RIG_QEMU={value} is not an executable file")
    version, why = _qualify(binary)
    if why:
        raise ProvisionError(f"RIG_QEMU={value} cannot serve the rig: {why}")
    assert version is not None
    # A binary the user chose knows its own firmware; ours would only shadow it.
    return Qemu(binary, (), version)


def _from_system() -> Qemu | None:
    found = shutil.which(BINARY)
    if found is None:
        return None
    binary = Path(found)
    version, why = _qualify(binary)
    if why:
        logger.info(f"not using {binary}: {why}")
        return None
    assert version is not None
    return Qemu(binary, (), version)


def _cached_entries(root: Path) -> list[tuple[str, Path]]:
    """(Debian source version, entry dir) of complete builds made by this recipe and flags."""
    found = []
    for manifest in (root / "qemu").glob(f"*/{MANIFEST}"):
        inputs = _build_inputs_of(manifest.parent)
        if inputs is None:
            continue
        source = str(inputs.get("source", ""))
        package, _, version = source.partition("=")
        if package == SOURCE_PACKAGE and inputs == build_inputs(version):
            found.append((version, manifest.parent))
    return sorted(found, key=lambda vp: debian_version_key(vp[0]), reverse=True)


def _from_cache(root: Path, requested: str = PINNED_VERSION) -> Qemu | None:
    for debian_version, path in _cached_entries(root):
        if not is_version(requested, debian_version):
            continue
        binary = path / "bin" / BINARY
        try:
            version = parse_version(_probe(binary, "--version"))
        except (OSError, subprocess.TimeoutExpired, ProvisionError):
            continue  # e.g. a shared library removed since: try an older entry, or rebuild
        if is_new_enough(version):
            assert version is not None
            return Qemu(binary, firmware_dirs(), version_text(version))
    return None


def find_qemu(version: str | None = None) -> Qemu | None:
    """A usable QEMU without provisioning anything: $RIG_QEMU, the system's, or a cached build
    of the pinned version; with `version` (--qemu-version) only a cached build of that one."""
    if version is None and (chosen := _from_env() or _from_system()) is not None:
        return chosen
    return _from_cache(cache_root(), version or PINNED_VERSION)


# ---------------------------------------------------------------------------------------------
# Building.


@contextmanager
def _build_lock(root: Path) -> Iterator[None]:
    """One builder at a time per cache (parallel test workers all call ensure_qemu)."""
    (root / "qemu").mkdir(parents=True, exist_ok=True)
    with (root / "qemu" / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _meson_venv(root: Path, pin: str, log: Path) -> Path:
    """A private venv holding meson==pin (Debian 12's meson is too old); returns its python.

    Only its python is used: QEMU's configure makes its own venv on top of it and writes its
    own meson script there, so the venv's scripts keeping the staging path does not matter.
    """
    interpreter = str(Path(sys.executable).resolve())
    venv = entry("tools", f"meson-{pin}", {"meson": pin, "python": interpreter}, root)
    if not venv.exists():
        with step(f"installing meson {pin} into a private venv"), venv.build() as stage:
            run_logged([interpreter, "-m", "venv", stage], log, "python -m venv")
            run_logged(
                [stage / "bin" / "python3", "-m", "pip", "install", "-q", f"meson=={pin}"],
                log,
                f"pip install meson=={pin}",
            )
    return venv.path / "bin" / "python3"


def _fetch_source(
    archive: SourceArchive, requested: str, work: Path, log: Path
) -> tuple[str, Path]:
    """The `requested` qemu source: (Debian version, unpacked tree). Nothing else."""
    with step("updating the private Debian source index"):
        archive.update(log)
    listed = archive.versions(SOURCE_PACKAGE)
    matching = [v for v in listed if is_version(requested, v)]
    pinned = " (the rig's pinned QEMU: bump PINNED_VERSION in rig/provision/qemu.py)"
    if not matching:
        raise ProvisionError(
            f"qemu {requested} is not in Debian's archive at {archive.mirror} "
            f"({', '.join(archive.suites)}){pinned if requested == PINNED_VERSION else ''}; "
            f"listed there: {', '.join(candidate_versions(listed)) or 'none new enough'} "
            "(choose one with --qemu-version)",
            log,
        )
    failed = []
    for version in matching:
        shutil.rmtree(work / "src", ignore_errors=True)
        try:
            with step(f"fetching {SOURCE_PACKAGE} {version} source"):
                return version, archive.fetch(SOURCE_PACKAGE, version, work / "src", log)
        except ProvisionError:
            # An index can list a file the mirror's pool no longer holds.
            failed.append(version)
    raise ProvisionError(
        f"qemu {', '.join(failed)} is listed but could not be fetched from {archive.mirror}",
        log,
    )


def _configure_and_build(
    tree: Path, build: Path, python: Path, prefix: Path, log: Path
) -> dict[str, float]:
    build.mkdir(parents=True, exist_ok=True)
    jobs = min(MAX_JOBS, (os.cpu_count() or 1) + 1)
    times: dict[str, float] = {}
    t0 = time.monotonic()
    with step("configuring QEMU"):
        run_logged(
            [tree / "configure", f"--python={python}", f"--prefix={prefix}", *CONFIGURE_FLAGS],
            log,
            "QEMU configure",
            cwd=build,
        )
    times["configure_s"] = round(time.monotonic() - t0, 1)
    t0 = time.monotonic()
    # Only the emulator: the default target also builds QEMU's unit and softfloat tests,
    # about a third more compiling for nothing the rig runs.
    with step(f"building qemu-system-x86_64 (ninja -j{jobs}, several minutes)"):
        run_logged(["ninja", f"-j{jobs}", BINARY], log, "QEMU build", cwd=build)
    times["build_s"] = round(time.monotonic() - t0, 1)
    return times


def _build(root: Path, requested: str) -> Qemu:
    work = root / "work" / "qemu"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    log = root / "logs" / time.strftime("qemu-build-%Y%m%dT%H%M%S.log")
    log.parent.mkdir(parents=True, exist_ok=True)
    logger.info(f"building QEMU from Debian source; full log: {log}")
    with step("checking Debian packages for the QEMU build"):
        ensure_packages((*BUILD_PACKAGES, *RUNTIME_PACKAGES), log, "building QEMU")
    archive = SourceArchive(root / "apt", SOURCE_SUITES)
    version, tree = _fetch_source(archive, requested, work, log)
    for patch in patches():
        with step(f"applying {patch.name}"):
            run_logged(["patch", "-p1", "-i", str(patch)], log, f"patch {patch.name}", cwd=tree)
    target = entry("qemu", upstream_version(version), build_inputs(version), root)
    python = _meson_venv(root, meson_pin((tree / "pythondeps.toml").read_text()), log)
    t_start = time.monotonic()
    with target.build() as stage:
        times = _configure_and_build(tree, work / "build", python, target.path, log)
        # Just the binary: firmware comes from Debian's packages via -L, and nothing else
        # that `ninja install` would add (keymaps, icons) is used with -display none.
        (stage / "bin").mkdir()
        shutil.copy2(work / "build" / BINARY, stage / "bin" / BINARY)
        qemu_version, why = _qualify(stage / "bin" / BINARY)
        if why or qemu_version is None:
            raise ProvisionError(f"the QEMU just built is not usable: {why}", log)
        (stage / "build-info.json").write_text(
            json.dumps(
                {
                    "debian_version": version,
                    "qemu_version": qemu_version,
                    **times,
                    "total_s": round(time.monotonic() - t_start, 1),
                    "log": str(log),
                },
                indent=2,
            )
        )
    shutil.rmtree(work, ignore_errors=True)
    logger.info(f"QEMU {qemu_version} cached at {target.path}")
    return Qemu(target.path / "bin" / BINARY, firmware_dirs(), qemu_version)


def _ensure_firmware(qemu: Qemu, root: Path) -> None:
    """Our build takes BIOS and option ROMs from Debian's packages: make sure they are there."""
    log = root / "logs" / "qemu-firmware.log"
    ensure_packages(RUNTIME_PACKAGES, log, "QEMU firmware")
    dirs = qemu.firmware_dirs or firmware_dirs()
    if missing := missing_firmware(dirs):
        raise ProvisionError(
            f"QEMU firmware {', '.join(missing)} not found in {', '.join(map(str, FIRMWARE_DIRS))}"
        )


def qemu_for(path: Path | None, version: str | None = None) -> Qemu | LocalQemu:
    """The QEMU a command boots: --qemu PATH as it is, else ensure_qemu(--qemu-version)."""
    return qemu_at(path) if path is not None else ensure_qemu(version)


def ensure_qemu(version: str | None = None) -> Qemu:
    """A usable QEMU, building one into the cache if none is found (idempotent). `version`
    (--qemu-version) asks for that build of Debian's qemu source instead of the pinned one."""
    if version is not None:
        check_requested(version)
    else:
        chosen = _from_env() or _from_system()
        if chosen is not None:
            return chosen  # it brings its own firmware
    requested = version or PINNED_VERSION
    root = cache_root()
    with _build_lock(root):
        qemu = _from_cache(root, requested) or _build(root, requested)
    _ensure_firmware(qemu, root)
    return qemu
