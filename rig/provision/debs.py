"""Binary Debian packages from the host's apt: resolve a candidate, download, unpack.

Only `apt-get download` is used: nothing is installed on the host, the packages' contents
become cache entries.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

from rig.cache import cache_root
from rig.errors import ProvisionError
from rig.progress import run_logged

# Root downloading into a directory `_apt` cannot write makes apt warn on every call.
APT_AS_ROOT = ("-o", "APT::Sandbox::User=root")


APT_LISTS = Path("/var/lib/apt/lists")


def _lists_stamp() -> str:
    """Changes whenever apt-get update brings new package lists (files renamed into place)."""
    try:
        return str(APT_LISTS.stat().st_mtime_ns)
    except OSError:
        return "none"


def _apt_cache(*args: str) -> str:
    """apt-cache's output, remembered until the package lists change: each call costs ~0.5 s
    and every `rig run` asks the same questions."""
    memo_path = cache_root() / "apt-cache-memo.json"
    stamp = _lists_stamp()
    try:
        memo = json.loads(memo_path.read_text())
    except (OSError, ValueError):
        memo = {}
    if memo.get("stamp") != stamp:
        memo = {"stamp": stamp, "answers": {}}
    key = " ".join(args)
    if key in memo["answers"]:
        return str(memo["answers"][key])
    answer = _run_apt_cache(*args)
    if answer.strip():  # an empty answer may be missing lists: do not remember it
        memo["answers"][key] = answer
        memo_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo_path.with_name(f".{memo_path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(memo))
        tmp.replace(memo_path)
    return answer


def _run_apt_cache(*args: str) -> str:
    try:
        result = subprocess.run(["apt-cache", *args], capture_output=True, text=True, check=False)
    except OSError as e:
        raise ProvisionError(f"cannot run apt-cache: {e} (is this a Debian host?)") from e
    return result.stdout


def candidate_version(package: str) -> str | None:
    """The version `apt-get download package` would fetch, or None if apt does not know it."""
    match = re.search(r"^\s*Candidate:\s*(\S+)", _apt_cache("policy", package), re.MULTILINE)
    if match is None or match.group(1) == "(none)":
        return None
    return match.group(1)


def package_names(prefix: str) -> list[str]:
    """Every package name apt knows that starts with `prefix`."""
    return sorted(set(_apt_cache("pkgnames", prefix).split()))


def require_candidate(package: str, log: Path) -> str:
    """The candidate version; refresh the package lists once if apt has never fetched them."""
    version = candidate_version(package)
    if version is None:
        # Fresh containers ship no package lists: one update usually is all that is missing.
        run_logged(["apt-get", "update", "-q"], log, "apt-get update")
        version = candidate_version(package)
    if version is None:
        raise ProvisionError(f"apt knows no installable version of {package}", log)
    return version


def download(package: str, version: str, dest: Path, log: Path) -> Path:
    """`apt-get download package=version` into `dest` (hash-checked by apt); the .deb path."""
    dest.mkdir(parents=True, exist_ok=True)
    run_logged(
        ["apt-get", *APT_AS_ROOT, "download", f"{package}={version}"],
        log,
        f"apt-get download {package}={version}",
        cwd=dest,
    )
    debs = sorted(dest.glob(f"{package}_*.deb"))
    if len(debs) != 1:
        raise ProvisionError(f"apt-get download {package}={version}: no .deb in {dest}", log)
    return debs[0]


def unpack(deb: Path, dest: Path, log: Path) -> None:
    """Unpack a .deb's files (no maintainer scripts run) into `dest`."""
    dest.mkdir(parents=True, exist_ok=True)
    run_logged(["dpkg-deb", "-x", deb, dest], log, f"dpkg-deb -x {deb.name}")
