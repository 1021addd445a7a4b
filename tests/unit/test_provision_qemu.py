"""The pure parts of QEMU provisioning: version choice, apt text, flags. No network, no build."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import rig.provision.qemu as qemu_mod
from rig.cache import MANIFEST, cache_key, entry
from rig.errors import ProvisionError, UsageError
from rig.provision.apt import (
    DEBIAN_KEYRING,
    SourceArchive,
    debian_version_key,
    mirrors_in_sources,
    parse_showsrc_versions,
    upstream_version,
)
from rig.provision.qemu import (
    CONFIGURE_FLAGS,
    PINNED_VERSION,
    Qemu,
    _fetch_source,
    build_inputs,
    built_with,
    candidate_versions,
    check_requested,
    find_qemu,
    firmware_dirs,
    is_new_enough,
    is_version,
    lists_device,
    meson_pin,
    missing_firmware,
    parse_version,
)

# Trimmed from `apt-cache showsrc qemu` against sid (three versions listed at once).
SHOWSRC = """\
Package: qemu
Binary: qemu-system, qemu-block-extra, qemu-system-data
Version: 1:10.2.2+ds-1
Maintainer: Debian QEMU Team <pkg-qemu-devel@lists.alioth.debian.org>
Build-Depends: debhelper-compat (= 13), python3-venv:any, meson (>> 1.5.0~),
 ninja-build, flex, bison
Files:
 9779358a11dbeb946f0edd0d8eb53733 10994 qemu_10.2.2+ds-1.dsc
Directory: pool/main/q/qemu

Package: qemu
Binary: qemu-system, qemu-block-extra, qemu-system-data
Version: 1:11.1.2+ds-3
Directory: pool/main/q/qemu

Package: qemu-web-desktop
Version: 23.04-1

Package: qemu
Version: 1:11.1.3+ds-1
Directory: pool/main/q/qemu

Package: qemu
Version: 1:11.1.3+ds-1
Directory: pool/main/q/qemu
"""

PYTHONDEPS = """\
[meson]
meson = { accepted = ">=1.5.0", installed = "1.9.0", canary = "meson" }
#pycotap = { accepted = ">=1.1.0", installed = "1.3.1" }

[meson-rust]
meson = { accepted = ">=1.9.0", installed = "1.9.1", canary = "meson" }
"""


@pytest.mark.parametrize(
    ("older", "newer"),
    [
        ("1:10.2.2+ds-1", "1:11.1.2+ds-3"),
        ("1:11.1.2+ds-3", "1:11.1.3+ds-1"),
        ("1:11.1.3+ds-1~bpo13+1", "1:11.1.3+ds-1"),  # a backport sorts before its origin
        ("1:10.0.2+ds-2+deb13u1~bpo12+1", "1:10.0.2+ds-2+deb13u1"),
        ("1:10.1.0~rc1+ds-1", "1:10.1.0+ds-1"),  # a release candidate sorts before the release
        ("9:1.0-1", "10:0.1-1"),  # epoch first, numerically
        ("10.9-1", "10.10-1"),  # numeric, not lexical
        ("1.0", "1.0.1"),
        ("1.0~rc1", "1.0"),
        ("1.0-1", "1.0-1a"),
        ("1.0a", "1.0+"),  # letters before symbols
        ("7.2+dfsg-7+deb12u18", "1:7.2+dfsg-7+deb12u18"),
    ],
)
def test_debian_version_order(older: str, newer: str) -> None:
    assert debian_version_key(older) < debian_version_key(newer)


def test_debian_version_equal_forms() -> None:
    assert debian_version_key("0:1.0-1") == debian_version_key("1.0-1")


_VERSION_PART = st.text(alphabet="0123456789.+~ab", min_size=1, max_size=6).filter(
    lambda s: s[0].isdigit()
)
_DEBIAN_VERSION = st.builds(
    lambda epoch, up, rev: f"{epoch}{up}{rev}",
    st.sampled_from(["", "1:", "2:"]),
    _VERSION_PART,
    st.sampled_from(["", "-1", "-1~bpo1", "-2+b1", "-10"]),
)


@pytest.mark.skipif(shutil.which("dpkg") is None, reason="needs dpkg to compare against")
@settings(max_examples=100, deadline=None)
@given(_DEBIAN_VERSION, _DEBIAN_VERSION)
def test_debian_version_order_matches_dpkg(a: str, b: str) -> None:
    def dpkg_says(op: str) -> bool:
        return subprocess.run(["dpkg", "--compare-versions", a, op, b], check=False).returncode == 0

    ka, kb = debian_version_key(a), debian_version_key(b)
    assert (ka < kb) == dpkg_says("lt")
    assert (ka == kb) == dpkg_says("eq")


def test_upstream_version() -> None:
    assert upstream_version("1:10.2.2+ds-1") == "10.2.2+ds"
    assert upstream_version("1:11.1.3+ds-1~bpo13+1") == "11.1.3+ds"
    assert upstream_version("2.0") == "2.0"
    assert upstream_version("1:2.0-rc1-3") == "2.0-rc1"


def test_parse_showsrc_versions_keeps_only_the_package() -> None:
    assert parse_showsrc_versions(SHOWSRC, "qemu") == [
        "1:10.2.2+ds-1",
        "1:11.1.2+ds-3",
        "1:11.1.3+ds-1",
    ]
    assert parse_showsrc_versions("", "qemu") == []


def test_candidates_are_new_enough_and_newest_first() -> None:
    listed = ["1:7.2+dfsg-7", "1:10.0.2+ds-2", "1:10.2.2+ds-1", "1:11.1.3+ds-1", "1:11.1.2+ds-3"]
    assert candidate_versions(listed) == ["1:11.1.3+ds-1", "1:11.1.2+ds-3", "1:10.2.2+ds-1"]
    assert candidate_versions(["1:10.1.0+ds-1", "1:10.1.0+ds-1"]) == ["1:10.1.0+ds-1"]
    assert candidate_versions(["1:10.0.9+ds-1"]) == []


def test_parse_qemu_version() -> None:
    out = "QEMU emulator version 10.2.2 (Debian 1:10.2.2+ds-1)\nCopyright (c) 2003-2025 ...\n"
    assert parse_version(out) == (10, 2, 2)
    assert parse_version("QEMU emulator version 7.2.19 (Debian 1:7.2+dfsg-7+deb12u18)") == (
        7,
        2,
        19,
    )
    assert parse_version("11.1") == (11, 1, 0)
    assert parse_version("no digits") is None
    assert is_new_enough((10, 1, 0))
    assert not is_new_enough((10, 0, 9))
    assert not is_new_enough(None)


def test_lists_device_matches_whole_name() -> None:
    help_text = (
        'Misc devices:\nname "vfio-pci", bus PCI, desc "VFIO-based PCI device assignment"\n'
        'name "vfio-user-pci", bus PCI, desc "VFIO over socket PCI device assignment"\n'
    )
    assert lists_device(help_text)
    assert not lists_device(help_text.splitlines()[1])
    assert not lists_device('name "vfio-user-pci-nohotplug", bus PCI\n')


def test_meson_pin_reads_the_meson_group() -> None:
    assert meson_pin(PYTHONDEPS) == "1.9.0"
    with pytest.raises(ProvisionError):
        meson_pin("[docs]\nsphinx = { installed = '6.2.1' }\n")


def test_configure_flags_build_only_what_the_rig_needs() -> None:
    flags = set(CONFIGURE_FLAGS)
    assert "--target-list=x86_64-softmmu" in flags
    assert "--enable-slirp" in flags  # hostfwd is the way into the guest
    assert "--without-default-features" in flags  # so gtk/sdl/vnc/spice/opengl stay off
    # virtio-9p-pci for virtme-ng's root; off by default, and it needs `attr` on too
    assert {"--enable-virtfs", "--enable-attr"} <= flags
    assert not any(
        f.startswith("--enable-") and f[9:] in {"gtk", "sdl", "vnc", "spice", "opengl"}
        for f in flags
    )
    assert "--disable-install-blobs" in flags
    assert "--disable-download" in flags


def test_build_inputs_key_follows_version_and_flags() -> None:
    a = build_inputs("1:10.2.2+ds-1")
    assert cache_key(a) == cache_key(build_inputs("1:10.2.2+ds-1"))
    assert cache_key(a) != cache_key(build_inputs("1:11.1.3+ds-1"))
    assert a["configure"] == list(CONFIGURE_FLAGS)


def test_build_inputs_key_follows_the_patches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rig's QEMU patches are part of the key: a changed patch is a new build."""
    assert build_inputs("1:10.2.2+ds-1")["patches"], "the posted-writes patch is listed"
    (tmp_path / "0001-x.patch").write_text("one\n")
    monkeypatch.setattr(qemu_mod, "PATCH_DIR", tmp_path)
    one = cache_key(build_inputs("1:10.2.2+ds-1"))
    (tmp_path / "0001-x.patch").write_text("two\n")
    assert cache_key(build_inputs("1:10.2.2+ds-1")) != one


def test_built_with_reads_the_builds_manifest(tmp_path: Path) -> None:
    """A fix that adds no option is known by the patch list of the build's cache entry."""
    binary = tmp_path / "entry" / "bin" / "qemu-system-x86_64"
    binary.parent.mkdir(parents=True)
    binary.write_bytes(b"")
    assert not built_with(binary, "0007-x.patch"), "no manifest: not a build of ours"
    manifest = tmp_path / "entry" / MANIFEST
    manifest.write_text(json.dumps({"inputs": build_inputs("1:10.2.2+ds-1")}))
    listed = sorted(p.name for p in qemu_mod.patches())
    assert built_with(binary, listed[-1])
    assert not built_with(binary, "0099-not-applied.patch")
    manifest.write_text("{not json")
    assert not built_with(binary, listed[-1])


def test_mirrors_in_sources_both_formats() -> None:
    deb822 = (
        "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm\n\n"
        "Types: deb\nURIs: http://deb.debian.org/debian-security\nSuites: bookworm-security\n"
    )
    one_line = (
        "deb https://packages.cloud.google.com/apt cloud-sdk-bookworm main\n"
        "deb [arch=amd64 signed-by=/k.gpg] http://mirror.example/debian/ bookworm main\n"
        "# deb http://commented.example/debian bookworm main\n"
    )
    assert mirrors_in_sources(deb822) == ["http://deb.debian.org/debian"]
    assert mirrors_in_sources(one_line) == ["http://mirror.example/debian"]


def test_source_archive_is_private_and_signed(tmp_path: Path) -> None:
    archive = SourceArchive(
        tmp_path, ["sid", "experimental"], mirror="http://deb.debian.org/debian"
    )
    assert archive.sources_list() == (
        f"deb-src [signed-by={DEBIAN_KEYRING}] http://deb.debian.org/debian sid main\n"
        f"deb-src [signed-by={DEBIAN_KEYRING}] http://deb.debian.org/debian experimental main\n"
    )
    conf = archive.apt_conf()
    assert 'Dir::Etc::main "/dev/null";' in conf  # the system's apt.conf is not read
    assert f'Dir::Etc::parts "{tmp_path}/etc/apt.conf.d";' in conf
    assert f'Dir::State "{tmp_path}/state";' in conf
    assert f'Dir::Cache "{tmp_path}/cache";' in conf
    assert '"/etc/apt' not in conf


def test_missing_firmware(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for name in ("bios-256k.bin", "kvmvapic.bin"):
        (tmp_path / "a" / name).write_bytes(b"")
    (tmp_path / "b" / "linuxboot_dma.bin").write_bytes(b"")
    assert missing_firmware([tmp_path / "a", tmp_path / "b"]) == ["efi-virtio.rom"]


# find_qemu's order, with stand-in executables (a shell script answering like QEMU would).


def _fake_qemu(path: Path, version: str, devices: str = 'name "vfio-user-pci", bus PCI\n') -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "#!/bin/sh\n"
        f'case "$*" in *--version*) echo "QEMU emulator version {version}";; '
        f"*help*) printf '{devices}';; esac\n"
    )
    path.chmod(0o755)
    return path


@pytest.fixture
def no_system_qemu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty cache and a PATH holding only a directory we control."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setenv("RIG_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("RIG_QEMU", raising=False)
    return bin_dir


def test_find_qemu_nothing(no_system_qemu: Path) -> None:
    assert find_qemu() is None


def test_rig_qemu_overrides(no_system_qemu: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_qemu(no_system_qemu / "qemu-system-x86_64", "10.2.0")
    mine = _fake_qemu(no_system_qemu.parent / "mine" / "qemu", "11.0.1")
    monkeypatch.setenv("RIG_QEMU", str(mine))
    assert find_qemu() == Qemu(mine, (), "11.0.1")


def test_rig_qemu_without_vfio_user_is_an_error(
    no_system_qemu: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mine = _fake_qemu(no_system_qemu.parent / "q", "10.2.0", devices='name "vfio-pci"\n')
    monkeypatch.setenv("RIG_QEMU", str(mine))
    with pytest.raises(ProvisionError, match="vfio-user-pci"):
        find_qemu()
    monkeypatch.setenv("RIG_QEMU", str(no_system_qemu / "absent"))
    with pytest.raises(ProvisionError, match="not an executable"):
        find_qemu()


def test_old_system_qemu_is_passed_over(no_system_qemu: Path) -> None:
    _fake_qemu(no_system_qemu / "qemu-system-x86_64", "7.2.22")
    assert find_qemu() is None


def test_new_system_qemu_is_used(no_system_qemu: Path) -> None:
    binary = _fake_qemu(no_system_qemu / "qemu-system-x86_64", "10.1.0")
    assert find_qemu() == Qemu(binary, (), "10.1.0")


def release(debian_version: str) -> str:
    """ "1:10.2.2+ds-1" -> "10.2.2", what the binary says of itself."""
    return upstream_version(debian_version).split("+")[0]


def _cached_build(root: Path, debian_version: str, recipe: int | None = None) -> Path:
    """A cache entry as _build leaves it, holding a stand-in binary of that version."""
    inputs = build_inputs(debian_version)
    if recipe is not None:
        inputs["recipe"] = recipe
    e = entry("qemu", upstream_version(debian_version), inputs, root)
    with e.build() as stage:
        _fake_qemu(stage / "bin" / "qemu-system-x86_64", release(debian_version))
    return e.path / "bin" / "qemu-system-x86_64"


def test_cached_build_is_found_only_for_this_recipe(no_system_qemu: Path) -> None:
    root = no_system_qemu.parent / "cache"
    _cached_build(root, PINNED_VERSION, recipe=-1)
    assert find_qemu() is None
    ours = _cached_build(root, PINNED_VERSION)
    found = find_qemu()
    assert found is not None
    assert found.binary == ours
    assert found.version == release(PINNED_VERSION)


def test_only_the_pinned_build_is_used_by_default(no_system_qemu: Path) -> None:
    """A newer build in the cache (from an earlier --qemu-version) does not replace the pin."""
    root = no_system_qemu.parent / "cache"
    newer = _cached_build(root, "1:99.0.0+ds-1")
    assert find_qemu() is None
    pinned = _cached_build(root, PINNED_VERSION)
    assert find_qemu() == Qemu(pinned, firmware_dirs(), release(PINNED_VERSION))
    for asked in ("99.0.0", "1:99.0.0+ds-1"):
        found = find_qemu(asked)
        assert found is not None and found.binary == newer


def test_qemu_version_skips_the_system_qemu(no_system_qemu: Path) -> None:
    _fake_qemu(no_system_qemu / "qemu-system-x86_64", "10.1.0")
    root = no_system_qemu.parent / "cache"
    pinned = _cached_build(root, PINNED_VERSION)
    system = find_qemu()
    assert system is not None and system.binary == no_system_qemu / "qemu-system-x86_64"
    asked = find_qemu(PINNED_VERSION)
    assert asked is not None and asked.binary == pinned


def test_is_version_names_debian_and_upstream_forms() -> None:
    for asked in ("1:10.2.2+ds-1", "10.2.2+ds-1", "10.2.2"):
        assert is_version(asked, "1:10.2.2+ds-1")
    assert is_version("10.2.2", "1:10.2.2+ds-3~bpo13+1")
    for asked in ("10.2", "1:10.2.2+ds-2", "10.2.20"):
        assert not is_version(asked, "1:10.2.2+ds-1")


def test_requested_qemu_must_have_vfio_user() -> None:
    check_requested("10.1.0")
    check_requested(PINNED_VERSION)
    for bad in ("9.2.0", "1:7.2+dfsg-7", "latest"):
        with pytest.raises(UsageError, match=r"QEMU >= 10\.1\.0"):
            check_requested(bad)


class ListedSources(SourceArchive):
    """The private source archive with its index already known: no apt-get, no network."""

    def __init__(self, root: Path, listed: list[str]) -> None:
        super().__init__(root, ["sid"], mirror="http://mirror.example/debian")
        self.listed = listed

    def update(self, log: Path) -> None:
        pass

    def versions(self, package: str) -> list[str]:
        return sorted(self.listed, key=debian_version_key, reverse=True)


def test_a_pin_gone_from_the_archive_is_an_error_not_another_qemu(tmp_path: Path) -> None:
    archive = ListedSources(tmp_path, ["1:11.1.3+ds-1", "1:7.2+dfsg-7"])
    with pytest.raises(ProvisionError) as caught:
        _fetch_source(archive, PINNED_VERSION, tmp_path / "work", tmp_path / "log")
    message = str(caught.value)
    assert f"qemu {PINNED_VERSION} is not in Debian's archive" in message
    assert "bump PINNED_VERSION" in message
    assert "listed there: 1:11.1.3+ds-1 (choose one with --qemu-version)" in message
