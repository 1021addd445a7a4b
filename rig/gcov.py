"""The coverage kernel's counters, saved from each VM before it powers off.

A rig booted on a coverage kernel (rig.provision.kcoverage) asks the guest for every .gcda
under /sys/kernel/debug/gcov as it stops, after a failure too while SSH still answers (a
guest that panicked or hung has nothing to give: its counters are lost). They land in
<log dir>/gcov/<path in the kernel tree>.gcda beside gcov.json; with $RIG_GCOV_DIR set
(`rig coverage` sets it for its whole run), in a directory of their own under it instead, so
that the VMs of every process of the run (`rig run`'s temporary logs, `rig up`'s) are found.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import logging
import os
import tarfile
import tempfile
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from rig.errors import RigError
from rig.provision.guestfiles import guest_program
from rig.provision.kcoverage import CoverageBuild

if TYPE_CHECKING:
    from rig.rig import Rig

logger = logging.getLogger(__name__)

SCRIPT = guest_program("gcov_guest.py")
REMOTE = "/tmp/rig-gcov.py"
COUNTERS = "gcov"  # under a rig's log directory
INFO = "gcov.json"
GCOV_ENV = "RIG_GCOV_DIR"


def counters_dest(log_dir: Path, name: str) -> Path:
    """Where a stopping rig named `name` puts its counters (see the module docstring)."""
    shared = os.environ.get(GCOV_ENV)
    if not shared:
        return log_dir / COUNTERS
    Path(shared).mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"{name}-", dir=shared)) / COUNTERS


def save_counters(rig: Rig, build: CoverageBuild, dest: Path, timeout: float = 60.0) -> int:
    """Copy the guest's counters of `build`'s profiled code into `dest`; how many files."""
    rig.put(SCRIPT, REMOTE)
    out = rig.sh(f"python3 {REMOTE}", timeout=timeout).stdout.strip()
    try:
        archive = base64.b64decode(out, validate=True)
    except binascii.Error as e:
        raise RigError(f"the guest's gcov counters came back garbled: {e}") from e
    return unpack_counters(archive, build.objtree, dest)


def unpack_counters(archive: bytes, objtree: str, dest: Path) -> int:
    """The .gcda files of a tar.gz from gcov_guest.py that lie under `objtree` (the build's
    object tree, as debugfs mirrors it), written under `dest` relative to that tree."""
    prefix = PurePosixPath(objtree.lstrip("/"))
    count = 0
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        for member in tar.getmembers():
            name = PurePosixPath(member.name)
            if not member.isfile() or name.suffix != ".gcda" or ".." in name.parts:
                continue
            if not name.is_relative_to(prefix):
                continue  # another build's code: not what this kernel's notes describe
            data = tar.extractfile(member)
            if data is None:
                continue
            target = dest / name.relative_to(prefix)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data.read())
            count += 1
    dest.mkdir(parents=True, exist_ok=True)
    (dest / INFO).write_text(json.dumps({"objtree": objtree, "files": count}) + "\n")
    return count


def counter_dirs(root: Path) -> list[Path]:
    """Every saved set of counters under `root` (one per VM), in path order."""
    return sorted(p.parent for p in root.rglob(f"{COUNTERS}/{INFO}"))
