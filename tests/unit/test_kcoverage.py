"""The coverage kernel's build pieces, the counters' way from the guest's tar to the host, and
the report: gcovr and the host's gcov on a small program compiled the way the kernel's
profiled files are (no VM; tests/e2e/test_coverage.py runs the real kernel)."""

from __future__ import annotations

import base64
import io
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from rig import cli
from rig.errors import ProvisionError
from rig.gcov import GCOV_ENV, INFO, counter_dirs, counters_dest, unpack_counters
from rig.jobs.coverage import COVERAGE_JSON, HTML, Figures, build_report, focus
from rig.provision.kbuild import build_inputs, entry_name, rig_fragment
from rig.provision.kbuildspec import TreeSource
from rig.provision.kconfig import Fragments
from rig.provision.kcoverage import MLX4, coverage_build, keep_notes, profiled
from rig.provision.kernel import KERNEL_ENV, KernelSpec
from rig.provision.ksource import ResolvedSource
from rig.provision.kworkspace import Workspace
from rig.provision.patchseries import EMPTY, load_series
from tests.unit.kbuild_helpers import make_patch

DEB = ResolvedSource(TreeSource(Path("/t")), "linux-source-6.1=6.1.192-2", "debian:x", "6.1.192")
OBJTREE = "/cache/kbuild-work/linux/obj-coverage"


def test_coverage_is_a_cache_entry_of_its_own_and_leaves_other_keys_alone() -> None:
    frag = Fragments.load([rig_fragment()])
    plain = build_inputs(DEB, EMPTY, frag, "gcc 12")
    assert "coverage" not in plain, "existing builds keep their keys"
    assert build_inputs(DEB, EMPTY, frag, "gcc 12", coverage=True) != plain
    assert entry_name(DEB, EMPTY, coverage=True) == "6.1.192-base-coverage"
    assert entry_name(DEB, EMPTY) == "6.1.192-base"


def _tree(root: Path, devlink: str) -> Path:
    (root / MLX4).mkdir(parents=True)
    (root / MLX4 / "Makefile").write_text("obj-m += mlx4_core.o\n")
    if devlink == "core":
        (root / "net/core").mkdir(parents=True)
        (root / "net/core/devlink.c").write_text("int d;\n")
        (root / "net/core/Makefile").write_text("obj-y += devlink.o\n")
    elif devlink == "dir":
        (root / "net/devlink").mkdir(parents=True)
        (root / "net/devlink/Makefile").write_text("obj-y := core.o\n")
    return root


def test_profiled_follows_where_devlink_lives(tmp_path: Path) -> None:
    old = profiled(_tree(tmp_path / "6.1", "core"))
    assert old.paths == (MLX4, "net/core/devlink.c")
    assert "GCOV_PROFILE_devlink.o := y" in old.makefile_lines["net/core/Makefile"]
    assert "GCOV_PROFILE := y" in old.makefile_lines[f"{MLX4}/Makefile"]
    new = profiled(_tree(tmp_path / "6.12", "dir"))
    assert new.paths == (MLX4, "net/devlink")
    assert "GCOV_PROFILE := y" in new.makefile_lines["net/devlink/Makefile"]
    with pytest.raises(ProvisionError, match=r"neither net/devlink/ nor net/core/devlink\.c"):
        profiled(_tree(tmp_path / "none", "none"))


def test_workspace_appends_after_a_patch_and_puts_both_back(tmp_path: Path) -> None:
    tree = _tree(tmp_path / "tree", "core")
    source = ResolvedSource(TreeSource(tree), str(tree), "tree:1", "6.1.0")
    patches = tmp_path / "p"
    patches.mkdir()
    mk = f"{MLX4}/Makefile"
    (patches / "1.patch").write_text(
        make_patch(mk, "obj-m += mlx4_core.o\n", "obj-m += mlx4_core.o mlx4_en.o\n")
    )
    log = tmp_path / "log"
    with Workspace.open(source, log, tmp_path / "work", variant="coverage") as ws:
        assert ws.obj.name == "obj-coverage" and ws.cfg.name == "cfg-coverage"
        ws.apply(load_series(patches), log)
        prof = profiled(ws.src)
        ws.append(prof.makefile_lines)
        assert (ws.src / mk).read_text().startswith("obj-m += mlx4_core.o mlx4_en.o\n")
        assert "GCOV_PROFILE := y" in (ws.src / mk).read_text()
        assert "GCOV_PROFILE_devlink.o" in (ws.src / "net/core/Makefile").read_text()
    assert (ws.src / mk).read_text() == "obj-m += mlx4_core.o\n"
    assert (ws.src / "net/core/Makefile").read_text() == "obj-y += devlink.o\n"
    assert Workspace(ws.root).obj.name == "obj", "the plain build keeps its object tree"


def _gcda_tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_unpack_counters_keeps_this_builds_gcda_only(tmp_path: Path) -> None:
    prefix = OBJTREE.lstrip("/")
    archive = _gcda_tar(
        {
            f"{prefix}/{MLX4}/crdump.gcda": b"c",
            f"{prefix}/net/core/devlink.gcda": b"d",
            f"{prefix}/{MLX4}/crdump.gcno": b"not a counter",
            f"other/tree/{MLX4}/main.gcda": b"another build's",
            f"{prefix}/../../escape.gcda": b"x",
        }
    )
    dest = tmp_path / "run" / "gcov"
    assert unpack_counters(archive, OBJTREE, dest) == 2
    assert (dest / MLX4 / "crdump.gcda").read_bytes() == b"c"
    assert (dest / "net/core/devlink.gcda").read_bytes() == b"d"
    assert sorted(p.name for p in dest.rglob("*") if p.is_file()) == [
        "crdump.gcda",
        "devlink.gcda",
        INFO,
    ]
    assert counter_dirs(tmp_path) == [dest]


def test_guest_program_archives_what_it_reads(tmp_path: Path) -> None:
    """gcov_guest.py's output is what unpack_counters takes (run here on a fake debugfs)."""
    from guest.programs import gcov_guest

    fake = tmp_path / "gcov"
    (fake / OBJTREE.lstrip("/") / MLX4).mkdir(parents=True)
    (fake / OBJTREE.lstrip("/") / MLX4 / "catas.gcda").write_bytes(b"counts")
    out = io.StringIO()
    mp = pytest.MonkeyPatch()
    mp.setattr(gcov_guest, "GCOV", str(fake))
    mp.setattr(sys, "stdout", out)
    try:
        assert gcov_guest.main() == 0
    finally:
        mp.undo()
    dest = tmp_path / "host"
    assert unpack_counters(base64.b64decode(out.getvalue().strip()), OBJTREE, dest) == 1
    assert (dest / MLX4 / "catas.gcda").read_bytes() == b"counts"


def test_kernel_env_names_the_kernel_of_boots_that_name_none(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(KERNEL_ENV, "deb:trixie")
    assert KernelSpec.parse(None) == KernelSpec(suite="trixie")
    assert KernelSpec.parse("default") == KernelSpec(), "an explicit spec wins"
    monkeypatch.delenv(KERNEL_ENV)
    assert KernelSpec.parse(None) == KernelSpec()


TOY = """\
int crdump_like(int a)
{
	if (a > 2)
		return a * 2;
	return a;
}

int devlink_region_never(int a)
{
	return a + 1;
}

int main(int argc, char **argv)
{
	(void)argv;
	return crdump_like(argc) - 1;
}
"""


def _toy_build(tmp_path: Path) -> Path:
    """A kernel-directory-like entry with a gcov/ as keep_notes writes it, for a program
    compiled as the coverage kernel compiles mlx4 (out of tree, sources prefix-mapped); the
    program is run once so that its counters exist."""
    src, obj = tmp_path / "src", tmp_path / "obj"
    (src / MLX4).mkdir(parents=True)
    (src / MLX4 / "crdump.c").write_text(TOY)
    (src / "net/core").mkdir(parents=True)
    (src / "net/core/devlink.c").write_text("int devlink_region_x(void) { return 0; }\n")
    (obj / MLX4).mkdir(parents=True)
    subprocess.run(
        ["gcc", "-O0", "--coverage", f"-fprofile-prefix-map={src}/=", "-c",
         str(src / MLX4 / "crdump.c"), "-o", f"{MLX4}/crdump.o"],
        cwd=obj, check=True,
    )  # fmt: skip
    subprocess.run(["gcc", "--coverage", f"{MLX4}/crdump.o", "-o", "toy"], cwd=obj, check=True)
    subprocess.run([str(obj / "toy")], cwd=obj, check=True)
    entry = tmp_path / "entry"
    prof = profiled(_tree(tmp_path / "layout", "core"))
    keep_notes(prof, src, obj, entry)
    # The counters, as a VM's stop saves them.
    run = tmp_path / "runs" / "rig-1" / "gcov"
    (run / MLX4).mkdir(parents=True)
    shutil.copyfile(obj / MLX4 / "crdump.gcda", run / MLX4 / "crdump.gcda")
    (run / INFO).write_text("{}\n")
    return entry


def test_report_from_real_gcov_data(tmp_path: Path) -> None:
    entry = _toy_build(tmp_path)
    build = coverage_build(entry)
    assert build is not None and build.paths == (MLX4, "net/core/devlink.c")
    assert json.loads((entry / "gcov/build.json").read_text())["notes"] == 1
    out = tmp_path / "out"
    report = build_report(build, tmp_path / "runs", out, tmp_path / "gcovr.log")
    crdump = f"{MLX4}/crdump.c"
    assert report.runs == 1
    hit, never = report.function("crdump_like"), report.function("devlink_region_never")
    assert hit is not None and never is not None
    assert hit.calls == 1 and hit.figures.lines_hit == hit.figures.lines - 1
    assert hit.figures.branches == 2 and hit.figures.branches_hit == 1  # a > 2: only false
    assert never.calls == 0 and never.figures.lines_hit == 0
    assert report.files[crdump] == Figures(lines_hit=5, lines=8, branches_hit=1, branches=2)
    assert list(report.files) == [crdump], (
        "no notes for devlink.c here (never compiled): no figures"
    )
    saved = json.loads((out / COVERAGE_JSON).read_text())
    assert saved["files"][crdump]["branches"] == 2
    assert "crdump_like" in report.table()
    page = (out / HTML).read_text()
    assert "crdump.c" in page
    assert any(
        "devlink_region_never" in p.read_text() for p in (out / HTML).parent.glob("*.html")
    ), "the pages show the sources"


def test_focus_functions() -> None:
    assert focus(f"{MLX4}/crdump.c", "mlx4_crdump_collect")
    assert focus(f"{MLX4}/catas.c", "catas_reset")
    assert not focus(f"{MLX4}/main.c", "mlx4_load_one")
    assert focus("net/core/devlink.c", "devlink_region_snapshot_create")
    assert not focus("net/core/devlink.c", "devlink_nl_cmd_get_doit")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["coverage", "--report-only", "--", "-k", "x"], "--report-only runs nothing"),
        (["coverage", "--out", "/proc/version"], "exists and is not a directory"),
    ],
)
def test_coverage_usage_errors(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_counters_go_to_the_log_dir_or_the_runs_shared_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(GCOV_ENV, raising=False)
    assert counters_dest(tmp_path / "logs", "rig") == tmp_path / "logs" / "gcov"
    monkeypatch.setenv(GCOV_ENV, str(tmp_path / "all"))
    one, two = counters_dest(tmp_path / "a", "rig"), counters_dest(tmp_path / "b", "rig")
    assert one != two and one.parent.parent == two.parent.parent == tmp_path / "all"
    assert one.name == "gcov" and one.parent.name.startswith("rig-")


def test_the_default_run_is_tox_e2e_selection_one_vm_per_core(tmp_path: Path) -> None:
    from rig.commands import coverage as cmd

    run = cmd.run_command(False, [], tmp_path / "k", tmp_path / "runs")
    marker = "e2e and not kbuild and not virtme and not coverage"  # tox.ini's e2e selection
    assert run[run.index(marker) - 1] == "-m"
    assert run[run.index("-n") + 1] == "auto" and "loadscope" in run  # xdist is a test extra
    assert run[-1] == str(cmd.default_tests())
    chosen = cmd.run_command(False, ["tests/e2e/test_regions.py"], tmp_path / "k", tmp_path)
    assert "-n" not in chosen and chosen[-1] == "tests/e2e/test_regions.py"
