"""mstflint's ConnectX-3 address list (ConnectX3.csv), the dwords `mstregdump` reads.

The rig writes every snapshot as mstregdump text too; when the input was not mstregdump text,
the addresses come from this list. It is taken from Debian's mstflint package (fetched with
`apt-get download`, never installed: the rig needs no mstflint on the host) into the cache.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from rig.cache import cache_root, entry
from rig.errors import ProvisionError
from rig.progress import step
from rig.provision import debs
from rig.provision.locking import building

PACKAGE = "mstflint"
CSV = "ConnectX3.csv"
CSV_IN_PACKAGE = Path("usr/share/mstflint") / CSV


def ensure_connectx3_csv() -> Path:
    """The cached ConnectX3.csv of the mstflint version apt offers."""
    log = cache_root() / "logs" / "mstflint.log"
    version = debs.require_candidate(PACKAGE, log)
    e = entry("mstflint", f"{PACKAGE}_{version}", {"package": PACKAGE, "version": version})
    with building(e) as missing:
        if missing:
            with step(f"fetching {CSV} from {PACKAGE}={version}"), e.build() as stage:
                deb = debs.download(PACKAGE, version, stage / "deb", log)
                extract_csv(deb, stage, log)
                shutil.rmtree(stage / "deb")
    return e.path / CSV


def extract_csv(deb: Path, dest: Path, log: Path) -> Path:
    """Unpack `deb` and keep only its ConnectX3.csv, as dest/ConnectX3.csv."""
    tree = dest / "tree"
    debs.unpack(deb, tree, log)
    found = tree / CSV_IN_PACKAGE
    if not found.is_file():
        raise ProvisionError(f"{deb.name} holds no /{CSV_IN_PACKAGE}", log)
    out = dest / CSV
    found.rename(out)
    shutil.rmtree(tree)
    return out
