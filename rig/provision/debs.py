"""Binary Debian packages: resolve a candidate, download, unpack — through the host's apt
(the static busybox and kernel source of the host's release) or a private one (DebArchive:
kernels of any suite).

Only `apt-get download` is used: nothing is installed on the host, the packages' contents
become cache entries.
"""

from __future__ import annotations

import fcntl
import json
import logging
import re
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from rig.cache import cache_root, write_atomically
from rig.errors import ProvisionError
from rig.progress import run_logged, step
from rig.provision.apt import PrivateApt, parse_stanzas
from rig.provision.suites import apt_lines

logger = logging.getLogger(__name__)

# Root downloading into a directory `_apt` cannot write makes apt warn on every call.
APT_AS_ROOT = ("-o", "APT::Sandbox::User=root")


APT_LISTS = Path("/var/lib/apt/lists")


# A private index older than this is refreshed before it answers (Debian's archive changes a
# few times a day; a kernel superseded in sid leaves the pool soon after).
INDEX_MAX_AGE = 24 * 3600
# An index this young is not fetched again to look for what it lacks.
INDEX_FRESH = 300


def _lists_stamp(lists: Path) -> str:
    """Changes whenever apt-get update brings new package lists (files renamed into place)."""
    try:
        return str(lists.stat().st_mtime_ns)
    except OSError:
        return "none"


def remembered(memo_path: Path, stamp: str, key: str, ask: Callable[[], str]) -> str:
    """`ask()`'s answer, remembered in `memo_path` until `stamp` changes: each apt-cache call
    costs ~0.5 s and every `rig run` asks the same questions."""
    try:
        memo = json.loads(memo_path.read_text())
    except (OSError, ValueError):
        memo = {}
    if memo.get("stamp") != stamp:
        memo = {"stamp": stamp, "answers": {}}
    if key in memo["answers"]:
        return str(memo["answers"][key])
    answer = ask()
    if answer.strip():  # an empty answer may be missing lists: do not remember it
        memo["answers"][key] = answer
        memo_path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(memo_path, json.dumps(memo))
    return answer


def _apt_cache(*args: str) -> str:
    """The host apt's apt-cache answer (remembered until the host's lists change)."""
    return remembered(
        cache_root() / "apt-cache-memo.json",
        _lists_stamp(APT_LISTS),
        " ".join(args),
        lambda: _run_apt_cache(*args),
    )


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


def download(
    package: str, version: str, dest: Path, log: Path, env: Mapping[str, str] | None = None
) -> Path:
    """`apt-get download package=version` into `dest` (hash-checked by apt); the .deb path.
    `env` names a private apt (PrivateApt.env); by default the host's."""
    dest.mkdir(parents=True, exist_ok=True)
    run_logged(
        ["apt-get", *APT_AS_ROOT, "download", f"{package}={version}"],
        log,
        f"apt-get download {package}={version}",
        cwd=dest,
        env=env,
    )
    debs = sorted(dest.glob(f"{package}_*.deb"))
    if len(debs) != 1:
        raise ProvisionError(f"apt-get download {package}={version}: no .deb in {dest}", log)
    return debs[0]


def unpack(deb: Path, dest: Path, log: Path) -> None:
    """Unpack a .deb's files (no maintainer scripts run) into `dest`."""
    dest.mkdir(parents=True, exist_ok=True)
    run_logged(["dpkg-deb", "-x", deb, dest], log, f"dpkg-deb -x {deb.name}")


class DebArchive(PrivateApt):
    """Binary packages of one Debian suite (or suites.ALL) through a private apt under the
    cache: never the host's sources, lists or dpkg status."""

    def __init__(self, suite: str, root: Path | None = None) -> None:
        self.suite = suite
        super().__init__((root or cache_root()) / "apt-deb" / suite, apt_lines(suite))

    @property
    def _updated(self) -> Path:
        return self.root / "updated"  # touched after each successful update

    def age(self) -> float | None:
        """Seconds since the indexes were last fetched; None if they never were."""
        try:
            return time.time() - self._updated.stat().st_mtime
        except OSError:
            return None

    def ensure_index(self, log: Path, max_age: float = INDEX_MAX_AGE) -> None:
        """Fetch the suite's indexes if there are none or they are older than `max_age`; a
        stale index that cannot be refreshed still answers (with a warning)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / ".lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # parallel rigs: one apt-get update at a time
            age = self.age()
            if age is not None and age < max_age:
                return
            try:
                with step(f"updating the private Debian index of {self.suite}"):
                    self.update(log)
            except ProvisionError as e:
                if age is None:
                    raise
                logger.warning(f"{e.args[0]}; using the index from {age / 3600:.0f} h ago")
                return
            self._updated.touch()

    def _ask(self, *args: str) -> str:
        return remembered(
            self.root / "answers.json",
            _lists_stamp(self.lists),
            " ".join(args),
            lambda: self.query(*args),
        )

    def candidate(self, package: str) -> str | None:
        """The version apt would choose from this suite's indexes, None if none lists it."""
        match = re.search(r"^\s*Candidate:\s*(\S+)", self._ask("policy", package), re.MULTILINE)
        if match is None or match.group(1) == "(none)":
            return None
        return match.group(1)

    def versions(self, package: str) -> list[str]:
        """Every version of `package` the indexes list (unordered, without repeats)."""
        found = [f["Version"] for f in parse_stanzas(self._ask("show", package)) if "Version" in f]
        return list(dict.fromkeys(found))

    def fields(self, package: str, version: str) -> dict[str, str] | None:
        """The index stanza of package=version, None if it is not listed."""
        for f in parse_stanzas(self._ask("show", f"{package}={version}")):
            if f.get("Package") == package and f.get("Version") == version:
                return f
        return None

    def download(self, package: str, version: str, dest: Path, log: Path) -> Path:
        return download(package, version, dest, log, env=self.env())
