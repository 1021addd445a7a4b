"""Debian kernels: kernel specs, which packages make a kernel (from recorded index stanzas),
each suite's apt lines, kernel directories as Debian's packages unpack, and the private
indexed copy of a user's modules tree (real depmod on modules gcc makes). No network."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from rig.errors import ProvisionError, UsageError
from rig.provision import suites
from rig.provision.apt import parse_stanzas
from rig.provision.debkernel import KernelDebs, Lookup, exact_depends, meta_package, resolve
from rig.provision.kernel import KernelSpec, indexed_modules, locate_kernel
from rig.provision.kmod import ModuleIndex

# Recorded from Debian's Packages indexes on 2026-11-26, trimmed to the fields the rig reads
# (one long Depends folded onto continuation lines, as deb822 allows).
SID = """\
Package: linux-base-7.2.13+deb14-cloud-amd64
Source: linux
Version: 7.2.13-1
Size: 417436

Package: linux-binary-unsigned-7.2.13+deb14-cloud-amd64
Source: linux
Version: 7.2.13-1
Depends: linux-base-7.2.13+deb14-cloud-amd64 (= 7.2.13-1)
Size: 13716124

Package: linux-modules-7.2.13+deb14-cloud-amd64
Source: linux
Version: 7.2.13-1
Depends: kmod, linux-base-7.2.13+deb14-cloud-amd64 (= 7.2.13-1)
Size: 23451956

Package: linux-binary-7.2.13+deb14-cloud-amd64
Source: linux-signed-amd64 (7.2.13+1)
Version: 7.2.13-1
Depends: linux-base-7.2.13+deb14-cloud-amd64 (= 7.2.13-1)
Size: 13717736

Package: linux-image-7.2.13+deb14-cloud-amd64
Source: linux-signed-amd64 (7.2.13+1)
Version: 7.2.13-1
Depends: dracut | initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool,
 linux-base-7.2.13+deb14-cloud-amd64 (= 7.2.13-1),
 linux-binary-7.2.13+deb14-cloud-amd64 (= 7.2.13-1),
 linux-modules-7.2.13+deb14-cloud-amd64 (= 7.2.13-1)
Size: 1916

Package: linux-image-cloud-amd64
Source: linux-signed-amd64 (7.2.13+1)
Version: 7.2.13-1
Depends: linux-base-cloud-amd64 (= 7.2.13-1), linux-image-7.2.13+deb14-cloud-amd64 (= 7.2.13-1)
Size: 1708
"""
BOOKWORM_SECURITY = """\
Package: linux-image-6.1.0-56-cloud-amd64-unsigned
Source: linux
Version: 6.1.192-2
Depends: kmod, linux-base (>= 4.3~), initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool
Size: 26714428

Package: linux-image-6.1.0-56-cloud-amd64
Source: linux-signed-amd64 (6.1.192+2)
Version: 6.1.192-2
Depends: kmod, linux-base (>= 4.3~), initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool
Size: 26713492

Package: linux-image-cloud-amd64
Source: linux-signed-amd64 (6.1.192+2)
Version: 6.1.192-2
Depends: linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2)
Size: 1504
"""
TRIXIE = """\
Package: linux-image-6.12.117+deb13-cloud-amd64-unsigned
Source: linux
Version: 6.12.117-1
Depends: kmod, initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool
Size: 34670992

Package: linux-image-6.12.117+deb13-cloud-amd64
Source: linux-signed-amd64 (6.12.117+1)
Version: 6.12.117-1
Depends: kmod, initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool
Size: 34671208
"""


def index(*texts: str, without: tuple[str, ...] = ()) -> dict[tuple[str, str], dict[str, str]]:
    stanzas = [f for text in texts for f in parse_stanzas(text)]
    return {(f["Package"], f["Version"]): f for f in stanzas if f["Package"] not in without}


def lookup_in(listed: dict[tuple[str, str], dict[str, str]]) -> Lookup:
    return lambda package, version: listed.get((package, version))


def test_parse_stanzas_keeps_fields_and_continuations() -> None:
    [first, second] = parse_stanzas("Package: a\nDescription: x\n more\n\nPackage: b\n")
    assert first == {"Package": "a", "Description": "x\nmore"}
    assert second == {"Package": "b"}


def test_exact_depends_takes_pinned_first_alternatives() -> None:
    fields = {"Depends": "dracut | initramfs-tools (>= 0.120), linux-base-7.2 (= 7.2-1), kmod"}
    assert exact_depends(fields) == {"linux-base-7.2": "7.2-1"}


def test_sid_meta_package_leads_to_the_split_packages_unsigned_first() -> None:
    kernel = resolve(lookup_in(index(SID)), meta_package("cloud-amd64"), "7.2.13-1")
    assert kernel == KernelDebs(
        "linux-image-7.2.13+deb14-cloud-amd64",
        "7.2.13-1",
        (
            "linux-binary-unsigned-7.2.13+deb14-cloud-amd64",
            "linux-modules-7.2.13+deb14-cloud-amd64",
            "linux-base-7.2.13+deb14-cloud-amd64",
        ),
    )
    assert kernel.release == "7.2.13+deb14-cloud-amd64"
    assert kernel.origin.startswith(
        "debian:linux-binary-unsigned-7.2.13+deb14-cloud-amd64=7.2.13-1,"
    )


def test_split_kernel_without_an_unsigned_image_takes_the_signed_one() -> None:
    listed = index(SID, without=("linux-binary-unsigned-7.2.13+deb14-cloud-amd64",))
    kernel = resolve(lookup_in(listed), "linux-image-7.2.13+deb14-cloud-amd64", "7.2.13-1")
    assert kernel.packages[0] == "linux-binary-7.2.13+deb14-cloud-amd64"


def test_bookworm_meta_package_leads_to_the_unsigned_image() -> None:
    kernel = resolve(lookup_in(index(BOOKWORM_SECURITY)), meta_package("cloud-amd64"), "6.1.192-2")
    # The very package (and so the cache entry) the rig used before deb:SUITE existed.
    assert kernel.packages == ("linux-image-6.1.0-56-cloud-amd64-unsigned",)
    assert kernel.origin == "debian:linux-image-6.1.0-56-cloud-amd64-unsigned=6.1.192-2"
    assert kernel.release == "6.1.0-56-cloud-amd64"


def test_a_named_self_contained_package_is_taken_as_named() -> None:
    listed = lookup_in(index(TRIXIE))
    signed = resolve(listed, "linux-image-6.12.117+deb13-cloud-amd64", "6.12.117-1")
    assert signed.packages == ("linux-image-6.12.117+deb13-cloud-amd64",)
    unsigned = resolve(listed, "linux-image-6.12.117+deb13-cloud-amd64-unsigned", "6.12.117-1")
    assert unsigned.packages == ("linux-image-6.12.117+deb13-cloud-amd64-unsigned",)


def test_resolve_refuses_what_is_not_a_kernel_image() -> None:
    listed = lookup_in(index(SID))
    with pytest.raises(UsageError, match="not a kernel image package"):
        resolve(listed, "linux-modules-7.2.13+deb14-cloud-amd64", "7.2.13-1")
    with pytest.raises(UsageError, match="not a kernel image package"):
        resolve(listed, "linux-image-7.2.13+deb14-cloud-amd64-dbg", "7.2.13-1")
    with pytest.raises(ProvisionError, match=r"lists no linux-image-cloud-amd64=1\.0"):
        resolve(listed, "linux-image-cloud-amd64", "1.0")


def test_kernel_spec_parse_deb_forms() -> None:
    assert KernelSpec.parse(None) == KernelSpec()
    assert KernelSpec.parse("deb:trixie") == KernelSpec(suite="trixie")
    assert KernelSpec.parse("deb:linux-image-x=1.2-3") == KernelSpec("linux-image-x", "1.2-3")
    assert KernelSpec.parse("deb:linux-image-x") == KernelSpec("linux-image-x")
    for bad in ("deb:buster", "deb:linux-modules-7.2", "deb:trixie=1"):
        with pytest.raises(UsageError, match="neither a Debian suite"):
            KernelSpec.parse(bad)


def test_userspace_follows_a_deb_suite_kernel() -> None:
    assert KernelSpec.parse("deb:sid").userspace == "sid"
    assert KernelSpec.parse("deb:trixie-backports").userspace == "trixie"
    assert KernelSpec.parse("deb:bookworm-backports").userspace == "bookworm"
    assert KernelSpec.parse(None).userspace == suites.DEFAULT_SUITE
    assert KernelSpec.parse("deb:linux-image-x").userspace == suites.DEFAULT_SUITE


def test_apt_lines_read_a_stable_suite_with_updates_and_security(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(suites, "system_mirror", lambda archive: f"http://m/{archive}")
    assert [(a.uri, a.suite) for a in suites.apt_lines("trixie")] == [
        ("http://m/debian", "trixie"),
        ("http://m/debian", "trixie-updates"),
        ("http://m/debian-security", "trixie-security"),
    ]
    assert [a.suite for a in suites.apt_lines("sid")] == ["sid"]
    assert [a.suite for a in suites.apt_lines("trixie-backports")] == ["trixie-backports"]
    every = {a.suite for a in suites.apt_lines(suites.ALL)}
    assert {"bookworm-security", "bookworm-backports", "sid"} <= every
    assert all(a.kind == "deb" for a in suites.apt_lines(suites.ALL))
    with pytest.raises(UsageError, match="unknown Debian suite 'buster'"):
        suites.apt_lines("buster")


# --- kernel directories ---------------------------------------------------------------------


def test_locate_kernel_in_a_build_directory(tmp_path: Path) -> None:
    (tmp_path / "bzImage").write_bytes(b"")
    (tmp_path / "lib" / "modules" / "6.6.0-rig").mkdir(parents=True)
    assert locate_kernel(tmp_path) == (
        tmp_path / "bzImage",
        tmp_path / "lib" / "modules" / "6.6.0-rig",
    )


def test_locate_kernel_in_debian_packages_unpacked(tmp_path: Path) -> None:
    # bookworm/trixie: boot/vmlinuz-<release>; sid: usr/lib/modules/<release>/vmlinuz[.unsigned]
    old, new = tmp_path / "old", tmp_path / "new"
    (old / "boot").mkdir(parents=True)
    (old / "boot" / "vmlinuz-6.12.117+deb13-cloud-amd64").write_bytes(b"")
    (old / "lib" / "modules" / "6.12.117+deb13-cloud-amd64").mkdir(parents=True)
    assert locate_kernel(old)[0].name == "vmlinuz-6.12.117+deb13-cloud-amd64"
    modules = new / "usr" / "lib" / "modules" / "7.2.13+deb14-cloud-amd64"
    modules.mkdir(parents=True)
    (modules / "vmlinuz.unsigned").write_bytes(b"")
    assert locate_kernel(new) == (modules / "vmlinuz.unsigned", modules)
    (modules / "vmlinuz").write_bytes(b"")
    with pytest.raises(UsageError, match="expected one kernel image"):
        locate_kernel(new)


def test_kernel_directory_without_modules(tmp_path: Path) -> None:
    (tmp_path / "bzImage").write_bytes(b"")
    with pytest.raises(UsageError, match="modules_install"):
        KernelSpec.parse(str(tmp_path))


# --- the private indexed copy ---------------------------------------------------------------

MODULE_A = """\
__attribute__((section(".modinfo"), used)) static const char n[] = "name=rigtest_a";
__attribute__((section("__ksymtab_strings"), used)) static const char k[] = "rigtest_sym";
int rigtest_sym(void) { return 1; }
"""
MODULE_B = """\
__attribute__((section(".modinfo"), used)) static const char n[] = "name=rigtest_b";
extern int rigtest_sym(void);
int rigtest_b(void) { return rigtest_sym(); }
"""


def user_modules(tmp_path: Path) -> Path:
    """lib/modules/<release> as a user unpacked it: two modules (b needs a), no modules.dep."""
    if shutil.which("gcc") is None:
        pytest.fail("gcc is needed to make test modules (apt-get install build-essential)")
    modules = tmp_path / "user" / "lib" / "modules" / "9.9.9-rig"
    (modules / "kernel").mkdir(parents=True)
    for name, text in (("rigtest_a", MODULE_A), ("rigtest_b", MODULE_B)):
        source = tmp_path / f"{name}.c"
        source.write_text(text)
        out = modules / "kernel" / f"{name}.ko"
        subprocess.run(["gcc", "-c", source, "-o", out], check=True)
    (modules / "modules.order").write_text("kernel/rigtest_a.ko\nkernel/rigtest_b.ko\n")
    (modules / "vmlinuz").write_bytes(b"kernel image: not a module, not copied")
    return modules


def checksums(directory: Path) -> dict[str, str]:
    """Every file's SHA-256, with its mode and mtime (what `sha256sum -r` plus stat would say)."""
    sums = {}
    for dirpath, _, files in os.walk(directory):
        for name in files:
            path = Path(dirpath) / name
            st = path.stat()
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            sums[str(path.relative_to(directory))] = f"{digest} {st.st_mode:o} {st.st_mtime_ns}"
    return sums


def test_modules_without_an_index_are_indexed_in_a_private_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RIG_CACHE", str(tmp_path / "cache"))
    modules = user_modules(tmp_path)
    before = checksums(tmp_path / "user")
    (tmp_path / "user").chmod(0o555)  # as a read-only directory would be
    try:
        copy = indexed_modules(modules)
    finally:
        (tmp_path / "user").chmod(0o755)
    assert checksums(tmp_path / "user") == before  # nothing written into the user's tree
    assert not (modules / "modules.dep").exists()
    assert copy.is_relative_to(tmp_path / "cache") and copy.name == "9.9.9-rig"
    index = ModuleIndex.load(copy)
    assert index.load_order(["rigtest_b"]) == ["kernel/rigtest_a.ko", "kernel/rigtest_b.ko"]
    assert not (copy / "vmlinuz").exists()  # the initramfs takes the tree whole: no image in it
    assert indexed_modules(modules) == copy  # cached
    (modules / "kernel" / "rigtest_b.ko").touch()
    os.utime(modules / "kernel" / "rigtest_b.ko", ns=(1, 1))
    assert indexed_modules(modules) != copy  # a changed tree gets a copy of its own
