"""report.json of a replay run (schema "mlx4-rig/replay/1", documented in docs/report.md)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SCHEMA = "mlx4-rig/replay/1"


@dataclass
class Comparison:
    """One pair of sources compared byte for byte."""

    a: str  # "cli" | "netlink" | "truth"
    b: str
    equal: bool
    differing_bytes: int
    first_offsets: list[int] = field(default_factory=list)


@dataclass
class SnapshotReport:
    region: str
    id: int
    size: int
    sha256: str
    path: str  # relative to the run directory
    agree: bool  # CLI, netlink and truth all equal
    comparisons: list[Comparison] = field(default_factory=list)
    changed_from_input: list[dict[str, object]] = field(default_factory=list)
    diff_path: str | None = None
    # The same bytes as mstregdump text (rig.formats.mstdump), relative to the run directory.
    mstdump_path: str | None = None
    # cr-space: the input's dwords and what became of them (rig.formats.coverage).
    coverage: dict[str, int] | None = None


@dataclass
class ReaderReport:
    """One way of reading CR-space, checked against the device (docs/report.md)."""

    name: str  # "devlink CLI" | "pyroute2 netlink" | "mstregdump"
    reads: str  # what it read, when and how
    against: str  # what it was compared with
    ok: bool
    compared_bytes: int = 0
    unexplained_bytes: int = 0
    # Runs a live register accounts for (a read taken while the device works): the register.
    explained: list[dict[str, object]] = field(default_factory=list)
    first_unexplained: list[int] = field(default_factory=list)
    problem: str = ""  # why not ok, in one line


@dataclass
class Report:
    ok: bool = False
    versions: dict[str, str] = field(default_factory=dict)
    clock: str = ""  # the guest's clock (rig.vm.clock): "warp" or "real"; "" before the boot
    boot: str = ""  # how the guest started (rig.rig.BOOT_MODES): "fresh" or "saved"
    fault: dict[str, Any] = field(default_factory=dict)
    inputs: dict[str, str] = field(default_factory=dict)
    # The card's netdevs before the fault and after the driver re-created them.
    netdevs: dict[str, list[dict[str, object]]] = field(default_factory=dict)
    snapshots: list[SnapshotReport] = field(default_factory=list)
    # Every reader of CR-space, one row each: devlink CLI, pyroute2 netlink, mstregdump.
    readers: list[ReaderReport] = field(default_factory=list)
    # The fault's story on one clock (rig.timeline): {t (s from the injection), what, witness}.
    timeline: list[dict[str, object]] = field(default_factory=list)
    # CR-space in 4 KiB cells (rig.formats.crmap.summary); {} when no snapshot was read.
    crspace_map: dict[str, object] = field(default_factory=dict)
    # With --traffic: the TCP transfer across the card through the fault (docs/report.md).
    traffic: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    exit_status: int = 2  # 0 pass, 1 the kernel under test failed, 2 the rig or input failed
    schema: str = SCHEMA

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=False) + "\n"

    def write(self, run_dir: Path) -> Path:
        path = run_dir / "report.json"
        path.write_text(self.to_json())
        return path


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
