"""The rig pytest plugin, run in a throw-away pytest session (pytester): no VM needed."""

from __future__ import annotations

import pytest

from rig.pytest_plugin import auto_workers, pytest_xdist_auto_num_workers

pytest_plugins = ("pytester",)


def test_a_rig_that_cannot_start_fails_with_one_line(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        def test_uses_the_rig(rig_session):
            pass
        """
    )
    result = pytester.runpytest(
        "--rig-qemu",
        "/nonexistent/qemu-system-x86_64",
        "--rig-artifacts",
        str(pytester.path / "artifacts"),
    )
    result.assert_outcomes(errors=1)
    out = result.stdout.str()
    assert (
        "rig 'session' cannot start: QEMU /nonexistent/qemu-system-x86_64 is not an "
        "executable file" in out
    )
    assert "Traceback" not in out and "During handling" not in out
    assert "skipped" not in out


def test_a_failing_test_leaves_the_rigs_logs_and_names_them(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest
        from rig.rig import Rig, RigConfig

        @pytest.fixture
        def rig(tmp_path):
            (tmp_path / "console.log").write_text("guest said hello\\n")
            return Rig(RigConfig(log_dir=tmp_path, name="fake"))  # never started

        def test_fails(rig):
            assert False, "the device disagreed"

        def test_passes(rig):
            pass
        """
    )
    artifacts = pytester.path / "evidence"
    result = pytester.runpytest(
        "--rig-artifacts", str(artifacts), "--junitxml", str(pytester.path / "junit.xml")
    )
    result.assert_outcomes(passed=1, failed=1)
    saved = list(artifacts.glob("*test_fails*/fake/console.log"))
    assert len(saved) == 1 and saved[0].read_text() == "guest said hello\n"
    assert not list(artifacts.glob("*test_passes*"))
    result.stdout.fnmatch_lines(["*rig artifacts*", f"{artifacts}/*test_fails*"])
    junit = (pytester.path / "junit.xml").read_text()
    assert 'name="rig_artifacts"' in junit


def test_devlink_fixture_runs_a_test_once_per_channel(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        class FakeRig:
            devlink = object()
            netlink = object()

        @pytest.fixture
        def rig():
            return FakeRig()

        def test_channel(devlink):
            assert devlink.name in ("cli", "netlink")
        """
    )
    result = pytester.runpytest("-v")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*test_channel?cli? PASSED*", "*test_channel?netlink? PASSED*"])


def test_auto_workers_two_a_core_on_warp_one_on_the_real_clock_as_memory_allows() -> None:
    gib = 1024 * 1024
    assert auto_workers(2, 24 * gib, warp=True) == 4
    assert auto_workers(2, 24 * gib, warp=False) == 2
    assert auto_workers(2, None, warp=True) == 4
    assert auto_workers(8, 10 * gib, warp=True) == 3  # 3 GiB a worker
    assert auto_workers(2, 1 * gib, warp=True) == 1


def test_auto_workers_answer_before_any_other_plugin(pytester: pytest.Pytester) -> None:
    """`-n auto` is a first-result hook that xdist answers too (a worker per CPU): the rig's
    answer must come first whichever plugin registered last (with the repo on PYTHONPATH,
    xdist's did, and the suite ran on two workers instead of four)."""

    class Other:
        @pytest.hookimpl(optionalhook=True)
        def pytest_xdist_auto_num_workers(self, config: pytest.Config) -> int:
            return 999

    config = pytester.parseconfigure("--rig-clock", "warp")
    config.pluginmanager.register(Other())
    assert config.hook.pytest_xdist_auto_num_workers(config=config) == (
        pytest_xdist_auto_num_workers(config)
    )
