"""`rig replay`, the main job, end to end: real QEMU, kernel and driver, each run a fresh rig."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from cx3 import layout as cr
from cx3.client import ControlClient
from cx3.wire import Crdump
from rig import builtin, cli
from rig.formats.dumptext import format_dump
from rig.formats.mstdump import HW_DEV_ID, parse_address_csv, parse_mstdump
from rig.formats.regionfile import load_region_file
from rig.jobs.replay import LIVE_DUMP, ReplayOptions, run_replay
from rig.provision.mstflint import ensure_connectx3_csv
from rig.pytest_plugin import boot_options
from rig.rig import RigConfig
from tests.browser import read_png, render

pytestmark = pytest.mark.e2e

READERS = ["devlink CLI", "pyroute2 netlink", "mstregdump"]
# report.html's map colours (rig.formats.reporthtml.COLORS) and one cell's pixels.
GREEN, RED, CELL_PIXELS = (0x8F, 0xD1, 0x9E), (0xD9, 0x36, 0x3E), 34 * 34


@pytest.fixture
def replay(rig_config: RigConfig) -> Callable[..., int]:
    """`rig replay ARGS...` through rig.cli, booting what the suite boots (--rig-kernel...)."""
    return lambda *args: cli.main(["replay", *boot_options(rig_config), *args])


def rendered(out: Path) -> tuple[str, int, int]:
    """report.html through headless Chromium: its text, and the map's equal and unexplained
    pixels in a screenshot that must not be blank. The PNG stays beside the page."""
    page = out / "report.html"
    body = render(page, out / "report.png", 1200, 2400).split("<body", 1)[1]
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", "<body" + body)).strip()
    png = read_png(out / "report.png")
    assert png.variance() > 500, "a blank page"
    return text, png.count(GREEN), png.count(RED)


def test_default_replay_passes_over_both_channels(
    tmp_path: Path, replay: Callable[..., int], capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert replay("--out", str(out)) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["schema"] == "mlx4-rig/replay/1" and report["ok"] and not report["errors"]
    assert sorted(s["region"] for s in report["snapshots"]) == ["cr-space", "fw-health"]
    assert len({s["id"] for s in report["snapshots"]}) == 1  # one id shared by both regions
    for snap in report["snapshots"]:
        assert snap["agree"] and all(c["equal"] for c in snap["comparisons"])
        assert (out / snap["path"]).read_bytes() == (out / snap["path"]).with_suffix(
            ".truth.bin"
        ).read_bytes()
    for log in ("console.log", "dmesg.txt", "qmp.log", "device-events.jsonl"):
        assert (out / log).stat().st_size > 0, log
    # Not an mstregdump input: the cr-space snapshot's mstregdump text lists ConnectX3.csv's.
    crspace = next(s for s in report["snapshots"] if s["region"] == "cr-space")
    saved = (out / crspace["path"]).read_bytes()
    assert (out / crspace["mstdump_path"]).read_text() == mstregdump_text(saved, csv_addresses())
    assert crspace["coverage"]["covered_dwords"] == cr.SIZE // 4

    # Three readers agree: the snapshots over devlink and netlink, CR-space live over mstflint.
    readers = report["readers"]
    assert [r["name"] for r in readers] == READERS and all(r["ok"] for r in readers), readers
    live = parse_mstdump((out / LIVE_DUMP).read_text(), LIVE_DUMP, cr.SIZE)
    assert [d.address for d in live] == list(csv_addresses())
    assert readers[2]["compared_bytes"] == 4 * len(live)
    image = builtin.crspace_image()  # what was loaded: mstregdump read it through the card
    assert all(d.data == image[d.address : d.address + 4] for d in live if not register(d.address))
    said = capsys.readouterr().out
    assert all(f"reader {name}: " in said for name in READERS) and "DIFFER" not in said

    text, green, red = rendered(out)
    assert text.startswith("PASS rig replay")
    assert "Readers of CR-space" in text and "mstregdump" in text
    assert "Timeline of the fault" in text
    for what in ("fault injected", "crdump starts", "REGION_NEW cr-space snapshot", "device reset"):
        assert what in text, what
    assert "re-probe done" in text and "eth1 up again with carrier" in text
    assert "Map of CR-space" in text and "unexplained: 0" in text
    assert "buf[00] 0x0fffffff 0x0fffffff 0x0fffffff" in text  # injected, captured, printed
    assert green > 200 * CELL_PIXELS and red < CELL_PIXELS / 2


def register(address: int) -> bool:
    return cr.register_at(address) is not None


def test_user_image_and_old_format_health_text(tmp_path: Path, rig_config: RigConfig) -> None:
    image = os.urandom(cr.SIZE)
    health = os.urandom(cr.HEALTH_SIZE)
    (tmp_path / "crspace.bin").write_bytes(image)
    # Older iproute2's layout: two-byte groups.
    old = "".join(
        f"{off:016x} " + " ".join(health[i : i + 2].hex() for i in range(off, off + 16, 2)) + "\n"
        for off in range(0, len(health), 16)
    )
    (tmp_path / "health.txt").write_text(old)
    assert format_dump(health) != old  # really the other layout
    report = run_replay(
        ReplayOptions(
            out=tmp_path / "run",
            crspace=tmp_path / "crspace.bin",
            health=tmp_path / "health.txt",
            kernel=rig_config.kernel,
            userspace=rig_config.userspace,
            qemu=rig_config.qemu,
            qemu_version=rig_config.qemu_version,
            clock=rig_config.clock,
            boot=rig_config.boot,  # --rig-boot saved: resumed, as the suite's other rigs
        )
    )
    assert report.ok, report.errors
    snaps = {s.region: s for s in report.snapshots}
    assert (tmp_path / "run" / snaps["fw-health"].path).read_bytes() == health
    saved = (tmp_path / "run" / snaps["cr-space"].path).read_bytes()
    explained = [
        (int(str(c["offset"])), int(str(c["length"]))) for c in snaps["cr-space"].changed_from_input
    ]
    assert all(c["register"] for c in snaps["cr-space"].changed_from_input)
    rest = bytearray(saved)
    for off, length in explained:  # outside what the report explains, the input is intact
        rest[off : off + length] = image[off : off + length]
    assert bytes(rest) == image


def csv_addresses() -> tuple[int, ...]:
    """The dwords Debian's mstflint reads on a ConnectX-3, from its ConnectX3.csv."""
    csv = ensure_connectx3_csv()
    return parse_address_csv(csv.read_text(), str(csv))


def mstregdump_text(image: bytes, addresses: tuple[int, ...]) -> str:
    """What mstregdump prints for `image`: printf("0x%8.8x 0x%8.8x\\n"), big-endian dwords."""
    return "".join(
        f"0x{a:08x} 0x{int.from_bytes(image[a : a + 4], 'big'):08x}\n" for a in addresses
    )


def explained_bytes(snapshot: dict[str, object]) -> set[int]:
    runs = snapshot["changed_from_input"]
    assert isinstance(runs, list) and all(c["register"] for c in runs), runs
    return {o for c in runs for o in range(c["offset"], c["offset"] + c["length"])}


def test_mstregdump_capture_replays_with_its_coverage(
    tmp_path: Path, replay: Callable[..., int], capsys: pytest.CaptureFixture[str]
) -> None:
    """A real card's capture: mstregdump text over ConnectX3.csv's ~14% of CR-space (here a
    random image's dwords, hw_dev_id a ConnectX-3's); the rest comes from the built-in image."""
    addresses = csv_addresses()
    assert HW_DEV_ID in addresses and len(addresses) > 30000
    image = bytearray(os.urandom(cr.SIZE))
    image[HW_DEV_ID : HW_DEV_ID + 4] = (0x000101F5).to_bytes(4, "big")
    dump = tmp_path / "crash.mstdump"
    dump.write_text(mstregdump_text(bytes(image), addresses))
    out = tmp_path / "run"

    assert replay("--crspace", str(dump), "--out", str(out)) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["ok"] and report["inputs"]["crspace_format"] == "mstregdump"
    snap = next(s for s in report["snapshots"] if s["region"] == "cr-space")
    coverage = snap["coverage"]
    assert coverage["covered_dwords"] == len(addresses) and coverage["unexplained"] == 0
    assert coverage["equal"] + coverage["explained"] == len(addresses)
    assert f"cr-space coverage: {len(addresses)} of {cr.SIZE // 4} dwords" in (
        capsys.readouterr().out
    )

    saved = (out / snap["path"]).read_bytes()
    explained = explained_bytes(snap)
    covered = {a + i for a in addresses for i in range(4)}
    filled = builtin.crspace_image()
    for off in range(cr.SIZE):  # the input where it covered, the built-in elsewhere
        if off not in explained:
            want = image[off] if off in covered else filled[off]
            assert saved[off] == want, f"{off:#x}"
    assert len({off // 4 for off in explained & covered}) == coverage["explained"]

    # The snapshot as mstregdump text, over the input's address list, reads back the same.
    text = (out / snap["mstdump_path"]).read_text()
    assert text == mstregdump_text(saved, addresses)
    again = load_region_file(out / snap["mstdump_path"], cr.SIZE, "CR-space", fill=lambda: saved)
    assert again.format == "mstregdump" and again.addresses == addresses
    assert again.data == saved


@pytest.fixture
def tampered_truth(monkeypatch: pytest.MonkeyPatch) -> int:
    """The device's ground truth, as the rig receives it, with one CR-space byte flipped:
    every comparison with it must then fail at that offset."""
    offset = 0x12345
    crdump = ControlClient.crdump

    def flipped(self: ControlClient, index: int) -> Crdump:
        truth = crdump(self, index)
        image = bytearray(truth.image)
        image[offset] ^= 0xFF
        return replace(truth, image=bytes(image))

    monkeypatch.setattr(ControlClient, "crdump", flipped)
    return offset


@pytest.fixture
def tampered_bar0(monkeypatch: pytest.MonkeyPatch) -> int:
    """The device's BAR0 as the rig reads it to check mstregdump, one byte flipped at an
    address mstregdump reads (ConnectX3.csv's first block)."""
    offset = 0x1001
    read_bar0 = ControlClient.read_bar0

    def flipped(self: ControlClient, at: int, length: int) -> bytes:
        data = bytearray(read_bar0(self, at, length))
        if at <= offset < at + length:
            data[offset - at] ^= 0xFF
        return bytes(data)

    monkeypatch.setattr(ControlClient, "read_bar0", flipped)
    return offset


def test_wrong_expectation_fails_exit_1_and_points_at_the_offset(
    tmp_path: Path,
    replay: Callable[..., int],
    tampered_truth: int,
    tampered_bar0: int,
    capsys: pytest.CaptureFixture[str],
) -> None:
    offset = tampered_truth
    out = tmp_path / "run"
    assert replay("--out", str(out)) == 1  # the kernel "failed": not the rig
    report = json.loads((out / "report.json").read_text())
    assert not report["ok"] and report["exit_status"] == 1 and not report["errors"]
    snap = next(s for s in report["snapshots"] if s["region"] == "cr-space")
    truth_vs_cli = next(c for c in snap["comparisons"] if (c["a"], c["b"]) == ("truth", "cli"))
    assert not truth_vs_cli["equal"] and truth_vs_cli["first_offsets"] == [offset]
    assert snap["diff_path"] is not None
    diff_text = (out / snap["diff_path"]).read_text()
    assert f"{offset & ~15:08x}" in diff_text and "^^" in diff_text
    # Every reader fails, each named: the snapshots' at the flipped capture byte, mstregdump
    # where the device's BAR0 was flipped.
    readers = {r["name"]: r for r in report["readers"]}
    assert list(readers) == READERS and not any(r["ok"] for r in readers.values())
    assert readers["devlink CLI"]["first_unexplained"] == [offset]
    assert readers["mstregdump"]["first_unexplained"] == [tampered_bar0]
    said = capsys.readouterr().out
    assert f"reader mstregdump: {4 * len(csv_addresses())} bytes" in said
    assert f"DIFFER: read what the device did not hold at {tampered_bar0:#x}" in said
    assert report["crspace_map"]["counts"]["unexplained"] == 2  # 0x1000's cell and 0x12000's

    text, _, red = rendered(out)
    assert text.startswith("FAIL rig replay")
    assert f"{offset:#010x} +1 byte, UNEXPLAINED" in text  # the cell's finding
    assert f"capture {offset & ~15:08x}" in text  # and its hexdump line
    assert f"unexplained at {tampered_bar0:#x}" in text
    assert "Timeline of the fault" in text and "crdump starts" in text
    assert red > 2 * CELL_PIXELS  # both cells on the map


def test_missing_input_is_a_clear_error_and_keeps_the_run_directory(
    tmp_path: Path, replay: Callable[..., int]
) -> None:
    out = tmp_path / "run"
    assert replay("--out", str(out), "--crspace", str(tmp_path / "nope")) == 2
    report = json.loads((out / "report.json").read_text())
    assert not report["ok"] and report["exit_status"] == 2
    assert report["errors"] == [
        f"cannot read CR-space file {tmp_path / 'nope'}: No such file or directory"
    ]
