"""Kernel builds without building: config fragments and their verification, `build:` specs,
cache keys, workspaces that put patched files back, compiler-error extraction."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from rig.errors import ProvisionError
from rig.provision.kbuild import (
    build_inputs,
    compile_errors,
    entry_name,
    origin,
    rig_fragment,
)
from rig.provision.kbuildspec import DebianSource, TreeSource, parse_build_spec
from rig.provision.kconfig import (
    FragmentError,
    Fragments,
    Setting,
    Unstuck,
    applicable,
    kconfig_symbols,
    kernel_series,
    parse_config,
    parse_fragment,
    still_defined,
    unstuck,
)
from rig.provision.kernel import KernelSpec
from rig.provision.ksource import ResolvedSource, kernel_version, newest_series, tree_fingerprint
from rig.provision.kworkspace import Workspace, prune, safe_relative
from rig.provision.patchseries import EMPTY, load_series
from tests.unit.kbuild_helpers import make_patch, new_file_patch

# --- config fragments ----------------------------------------------------------------------


def test_fragment_later_lines_override_and_n_means_unset() -> None:
    frag = parse_fragment(
        '# comment\nCONFIG_A=y\nCONFIG_B=m\n# CONFIG_C is not set\nCONFIG_S="x # y"\nCONFIG_A=n\n'
    )
    assert frag == {
        "A": Setting("A", None),
        "B": Setting("B", "m"),
        "C": Setting("C", None),
        "S": Setting("S", '"x # y"'),
    }


@pytest.mark.parametrize("line", ["CONFIG_A=y # why", "A=y", "CONFIG_A"])
def test_fragment_rejects_what_kconfig_would_misread(line: str) -> None:
    with pytest.raises(FragmentError, match=r"rig.config:2:"):
        parse_fragment(f"CONFIG_OK=y\n{line}\n", "rig.config")


def test_removed_in_directive_marks_the_next_setting() -> None:
    frag = parse_fragment(
        "CONFIG_A=y\n# rig: removed in 6.2\nCONFIG_OLD=y\n#  rig:removed in 6.4\n"
        "# CONFIG_SLOB is not set\n",
        "rig.config",
    )
    assert frag == {
        "A": Setting("A", "y"),
        "OLD": Setting("OLD", "y", (6, 2)),
        "SLOB": Setting("SLOB", None, (6, 4)),
    }
    assert set(applicable(frag, (6, 1))) == {"A", "OLD", "SLOB"}
    assert set(applicable(frag, (6, 2))) == {"A", "SLOB"}
    assert set(applicable(frag, (6, 12))) == {"A"}
    assert set(applicable(frag, (7, 2))) == {"A"}


def test_a_removed_symbol_still_defined_is_named() -> None:
    frag = parse_fragment("# rig: removed in 6.2\nCONFIG_OLD=y\nCONFIG_A=y\n")
    assert still_defined(frag, (6, 12), {"OLD", "A"}) == [Setting("OLD", "y", (6, 2))]
    assert still_defined(frag, (6, 12), {"A"}) == []
    assert still_defined(frag, (6, 1), {"OLD", "A"}) == []  # before removal: checked as usual


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("# rig: removed in 6\nCONFIG_A=y\n", "rig.config:1: unknown directive"),
        ("# rig: only on tuesdays\nCONFIG_A=y\n", "rig.config:1: unknown directive"),
        ("# rig: removed in 6.2\n", "rig.config:1: directive not followed"),
        ("# rig: removed in 6.2\n\nCONFIG_A=y\n", "rig.config:1: directive not followed"),
        ("# rig: removed in 6.2\n# rig: removed in 6.3\nCONFIG_A=y\n", "rig.config:1:"),
    ],
)
def test_bad_directives(text: str, message: str) -> None:
    with pytest.raises(FragmentError, match=message):
        parse_fragment(text, "rig.config")


def test_kernel_series() -> None:
    assert kernel_series("6.12.118") == (6, 12)
    assert kernel_series("7.2.0") == (7, 2)
    assert kernel_series("6.1.192") < (6, 2) <= kernel_series("6.12.0")


def test_unstuck_lists_each_setting_the_config_lost() -> None:
    frag = parse_fragment(
        "CONFIG_A=y\nCONFIG_B=m\n# CONFIG_C is not set\n# CONFIG_D is not set\nCONFIG_E=y\n"
    )
    config = parse_config("CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=y\nCONFIG_E=m\n")
    assert unstuck(frag, config) == [
        Unstuck(Setting("B", "m"), None),
        Unstuck(Setting("C", None), "y"),
        Unstuck(Setting("E", "y"), "m"),
    ]  # D: absent from .config counts as not set


def test_unstuck_messages_say_why() -> None:
    missing = Unstuck(Setting("NOPE", "y"), None, exists=False).describe()
    assert missing == (
        "CONFIG_NOPE=y did not stick: .config has CONFIG_NOPE is not set "
        "(no Kconfig file defines this symbol in this source)"
    )
    assert "nothing selects it" in Unstuck(Setting("MLX4_CORE", "m"), None, True).describe()


def test_kconfig_symbols_reads_config_and_menuconfig(tmp_path: Path) -> None:
    (tmp_path / "drivers").mkdir()
    (tmp_path / "Kconfig").write_text("config A\n\tbool\nmenuconfig B\n\tbool 'b'\n")
    (tmp_path / "drivers" / "Kconfig.debug").write_text("  config C_1\n")
    assert kconfig_symbols(tmp_path) == {"A", "B", "C_1"}


def test_rig_fragment_has_what_the_guest_needs() -> None:
    settings = Fragments.load([rig_fragment()]).settings
    for symbol in (
        "64BIT",
        "PCI_MSI",
        "VIRTIO_PCI",
        "VIRTIO_BLK",
        "VIRTIO_NET",
        "EXT4_FS",
        "DEVTMPFS",
        "SERIAL_8250_CONSOLE",
        "UNIX",
        "INET",
        "NET_DEVLINK",
        "MODULE_UNLOAD",
        "MLX4_DEBUG",
        "BLK_DEV_INITRD",
        "UNIX98_PTYS",
        "TMPFS",
        "ACPI",
    ):
        assert settings[symbol].value == "y", symbol
    # The rig loads mlx4_core itself (to choose its parameters): it must be a module.
    assert settings["MLX4_CORE"].value == "m"


def test_fragments_digest_follows_contents_and_order(tmp_path: Path) -> None:
    a, b = tmp_path / "a.config", tmp_path / "b.config"
    a.write_text("CONFIG_A=y\n")
    b.write_text("CONFIG_A=n\n")
    assert Fragments.load([a, b]).settings["A"].value is None
    assert Fragments.load([a, b]).digest != Fragments.load([b, a]).digest
    assert Fragments.load([a]).digest == Fragments.load([a]).digest


# --- build: specs ---------------------------------------------------------------------------


def test_build_spec_debian_series_and_pinned_version(tmp_path: Path) -> None:
    assert parse_build_spec("build:6.1").source == DebianSource("6.1")
    spec = parse_build_spec("build:6.1=6.1.192-2")
    assert spec.source == DebianSource("6.1", "6.1.192-2") and spec.patches is None
    assert spec.source.package == "linux-source-6.1"
    assert parse_build_spec("build:").source == DebianSource("6.1")
    assert parse_build_spec("build:7.2").source == DebianSource("7.2")
    assert parse_build_spec("build:6.12=6.12.118-1").describe() == "build:6.12=6.12.118-1"


def test_build_spec_debian_suite(tmp_path: Path) -> None:
    spec = parse_build_spec("build:trixie", cwd=tmp_path)
    assert spec.source == DebianSource(None, None, "trixie")
    assert spec.describe() == "build:trixie"
    (tmp_path / "p").mkdir()
    assert parse_build_spec("build:sid+p", cwd=tmp_path).source == DebianSource(None, None, "sid")
    # A directory of a suite's name is reached by its path.
    (tmp_path / "trixie").mkdir()
    (tmp_path / "trixie" / "Makefile").write_text("VERSION = 6\n")
    (tmp_path / "trixie" / "Kconfig").write_text("")
    assert parse_build_spec("build:./trixie", cwd=tmp_path).source == TreeSource(
        tmp_path / "trixie"
    )


def test_newest_series_from_apt_cache_search() -> None:
    # Recorded from the rig's private index of bookworm (bookworm-security carries 6.12) on
    # 2026-11-26, plus packages the pattern must not take.
    search = (
        "linux-source-6.1 - Linux kernel source for version 6.1 with Debian patches\n"
        "linux-source-6.12 - Linux kernel source for version 6.12 with Debian patches\n"
        "linux-source - Linux kernel source (meta-package)\n"
        "linux-source-6.9 - sorted after 6.12 by apt, older by number\n"
        "linux-source-6.13-rc - not a series\n"
    )
    assert newest_series(search) == "6.12"
    assert newest_series("linux-source-7.2 - Linux kernel source\n") == "7.2"
    assert newest_series("") is None


def test_build_spec_with_patches_resolves_relative_paths(tmp_path: Path) -> None:
    (tmp_path / "p").mkdir()
    spec = parse_build_spec("build:6.1+p", cwd=tmp_path)
    assert spec.patches == tmp_path / "p"
    assert spec.describe() == f"build:6.1+{tmp_path / 'p'}"
    assert spec.unpatched().patches is None


def test_build_spec_tree_source(tmp_path: Path) -> None:
    tree = tmp_path / "linux"
    tree.mkdir()
    with pytest.raises(ProvisionError, match="not a kernel tree"):
        parse_build_spec(f"build:{tree}")
    (tree / "Makefile").write_text("VERSION = 6\n")
    (tree / "Kconfig").write_text("")
    assert parse_build_spec("build:linux", cwd=tmp_path).source == TreeSource(tree)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("build:6.1+", "nothing after"),
        ("build:6.1+/no/such/dir", "does not exist"),
        ("build:/no/such/tree", "neither a Debian series"),
        ("build:forky", "a Debian suite \\(bookworm, "),
    ],
)
def test_bad_build_specs(text: str, message: str) -> None:
    with pytest.raises(ProvisionError, match=message):
        parse_build_spec(text)


def test_kernel_spec_understands_build_specs() -> None:
    assert KernelSpec.parse("build:6.1").build == parse_build_spec("build:6.1")


def test_kernel_version_from_makefile() -> None:
    text = "# SPDX\nVERSION = 6\nPATCHLEVEL = 1\nSUBLEVEL = 192\nEXTRAVERSION =\n"
    assert kernel_version(text) == "6.1.192"
    assert kernel_version("VERSION = 6\nPATCHLEVEL = 12\nSUBLEVEL =\n") == "6.12.0"


# --- cache keys -----------------------------------------------------------------------------

DEB = ResolvedSource(
    DebianSource("6.1"),
    "linux-source-6.1=6.1.192-2",
    "debian:linux-source-6.1=6.1.192-2",
    "6.1.192",
)


def _patches(tmp_path: Path, name: str, text: str) -> Path:
    d = tmp_path / name
    d.mkdir()
    (d / "0001-x.patch").write_text(make_patch("f.c", "a\n", text))
    return d


def test_cache_key_changes_with_each_input(tmp_path: Path) -> None:
    frag = Fragments.load([rig_fragment()])
    other_frag = tmp_path / "extra.config"
    other_frag.write_text("CONFIG_X=y\n")
    series = load_series(_patches(tmp_path, "p1", "b\n"))
    base = build_inputs(DEB, EMPTY, frag, "gcc 12")
    variants = [
        build_inputs(DEB, series, frag, "gcc 12"),
        build_inputs(DEB, load_series(_patches(tmp_path, "p2", "c\n")), frag, "gcc 12"),
        build_inputs(DEB, EMPTY, Fragments.load([rig_fragment(), other_frag]), "gcc 12"),
        build_inputs(DEB, EMPTY, frag, "gcc 13"),
        build_inputs(
            ResolvedSource(DEB.spec, "x", "debian:linux-source-6.1=6.1.190-1", "6.1.190"),
            EMPTY,
            frag,
            "gcc 12",
        ),
    ]
    keys = [str(v) for v in (base, *variants)]
    assert len(set(keys)) == len(keys)
    assert build_inputs(DEB, series, frag, "gcc 12") == variants[0], "stable"
    # An empty directory builds exactly what no series builds: the same entry.
    empty = tmp_path / "empty"
    empty.mkdir()
    assert build_inputs(DEB, load_series(empty), frag, "gcc 12") == base


def test_entry_names_and_origin(tmp_path: Path) -> None:
    series = load_series(_patches(tmp_path, "my fix!", "b\n"))
    assert entry_name(DEB, EMPTY) == "6.1.192-base"
    assert entry_name(DEB, series) == "6.1.192-my_fix_"
    assert origin(DEB, EMPTY) == "build:linux-source-6.1=6.1.192-2"
    assert origin(DEB, series) == f"build:linux-source-6.1=6.1.192-2+{tmp_path}/my fix! (1 patch)"
    assert origin(DEB, EMPTY, [Path("/x/no-mlx4.config")]) == (
        "build:linux-source-6.1=6.1.192-2 with no-mlx4.config"
    )


def test_tree_fingerprint_outside_git_follows_sizes_and_mtimes(tmp_path: Path) -> None:
    (tmp_path / "a.c").write_text("a\n")
    first = tree_fingerprint(tmp_path)
    assert tree_fingerprint(tmp_path) == first
    os.utime(tmp_path / "a.c", ns=(1, 1))
    assert tree_fingerprint(tmp_path) != first


def test_tree_fingerprint_in_git_follows_head_changes_and_untracked_files(tmp_path: Path) -> None:
    def git(*args: str) -> None:
        subprocess.run(
            [
                "git",
                "-C",
                str(tmp_path),
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@example.org",
                *args,
            ],
            check=True,
            capture_output=True,
        )

    git("init", "-q")
    (tmp_path / "a.c").write_text("a\n")
    git("add", "a.c")
    git("commit", "-qm", "one")
    clean = tree_fingerprint(tmp_path)
    assert clean.startswith("git-") and tree_fingerprint(tmp_path) == clean
    (tmp_path / "a.c").write_text("b\n")
    edited = tree_fingerprint(tmp_path)
    (tmp_path / "new.c").write_text("n\n")
    untracked = tree_fingerprint(tmp_path)
    git("add", "-A")
    git("commit", "-qm", "two")
    assert len({clean, edited, untracked, tree_fingerprint(tmp_path)}) == 4


# --- workspaces -----------------------------------------------------------------------------


def _tree_source(tmp_path: Path) -> ResolvedSource:
    tree = tmp_path / "tree"
    (tree / "drivers").mkdir(parents=True)
    (tree / "drivers" / "x.c").write_text("int x;\n")
    (tree / "drivers" / "keep.c").write_text("int keep;\n")
    (tree / "Makefile").write_text("VERSION = 6\nPATCHLEVEL = 1\n")
    return ResolvedSource(TreeSource(tree), str(tree), "tree:1", "6.1.0")


def test_workspace_puts_patched_files_back_newer(tmp_path: Path) -> None:
    source = _tree_source(tmp_path)
    patches = tmp_path / "p"
    patches.mkdir()
    (patches / "1.patch").write_text(
        make_patch("drivers/x.c", "int x;\n", "int x = 1;\n")
        + new_file_patch("drivers/new.c", "int n;\n")
    )
    base = tmp_path / "work"
    log = tmp_path / "log"
    with Workspace.open(source, log, base) as ws:
        assert (ws.src / "drivers" / "x.c").read_text() == "int x;\n"
        pristine_mtime = (ws.src / "drivers" / "keep.c").stat().st_mtime_ns
        ws.apply(load_series(patches), log)
        assert (ws.src / "drivers" / "x.c").read_text() == "int x = 1;\n"
        assert (ws.src / "drivers" / "new.c").is_file()
        patched_mtime = (ws.src / "drivers" / "x.c").stat().st_mtime_ns
    # Leaving the workspace restored the tree, with a newer mtime so make recompiles.
    assert (ws.src / "drivers" / "x.c").read_text() == "int x;\n"
    assert (ws.src / "drivers" / "x.c").stat().st_mtime_ns >= patched_mtime
    assert not (ws.src / "drivers" / "new.c").exists()
    assert (ws.src / "drivers" / "keep.c").stat().st_mtime_ns == pristine_mtime
    assert (tmp_path / "tree" / "drivers" / "x.c").read_text() == "int x;\n", (
        "the user's tree is never written"
    )


def test_workspace_undoes_an_interrupted_build(tmp_path: Path) -> None:
    source = _tree_source(tmp_path)
    patches = tmp_path / "p"
    patches.mkdir()
    (patches / "1.patch").write_text(make_patch("drivers/x.c", "int x;\n", "int y;\n"))
    log = tmp_path / "log"
    with Workspace.open(source, log, tmp_path / "work") as ws:
        ws.apply(load_series(patches), log)
        # As if the process died here: the next open must restore.
        (ws.root / "applied.json").rename(ws.root / "kept.json")
    (ws.root / "kept.json").rename(ws.root / "applied.json")
    with Workspace.open(source, log, tmp_path / "work") as ws:
        assert (ws.src / "drivers" / "x.c").read_text() == "int x;\n"


def test_patches_may_not_leave_the_tree(tmp_path: Path) -> None:
    assert safe_relative("drivers/x.c")
    assert not safe_relative("../etc/passwd") and not safe_relative("/etc/passwd")


def test_prune_keeps_the_most_recent(tmp_path: Path) -> None:
    for i, name in enumerate(("old", "mid", "new")):
        (tmp_path / name).mkdir()
        (tmp_path / name / ".ready").write_text("")
        os.utime(tmp_path / name / ".ready", (1000 + i, 1000 + i))
    assert prune(tmp_path, keep=2) == [tmp_path / "old"]
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == [
        "mid",
        "new",
    ]


def test_compile_errors_are_picked_from_interleaved_output() -> None:
    out = """\
  CC [M]  drivers/net/ethernet/mellanox/mlx4/crdump.o
  CC      fs/ext4/inode.o
drivers/net/ethernet/mellanox/mlx4/crdump.c:147:5: error: 'x' undeclared (first use here)
make[5]: *** [scripts/Makefile.build:250: drivers/net/ethernet/mellanox/mlx4/crdump.o] Error 1
  CC      fs/ext4/super.o
"""
    assert compile_errors(out) == [
        "drivers/net/ethernet/mellanox/mlx4/crdump.c:147:5: error: 'x' undeclared (first use here)"
    ]
    # Without a compiler error (a failing script, say), make's first complaint.
    assert compile_errors("x\nmake[2]: *** [a] Error 1\nmake: *** [b] Error 2\n") == [
        "make[2]: *** [a] Error 1"
    ]
