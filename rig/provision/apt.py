"""Debian packages: install what the host lacks, and private apt configurations (PrivateApt)
for source packages (SourceArchive) and other suites' binary packages (rig.provision.debs).

A private apt never touches the system's /etc/apt or its dpkg status: it keeps its own sources
list, lists and archives under the cache, so adding `deb-src` for sid cannot change what the
host installs, and what the host has installed cannot change what it chooses.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from rig.errors import ProvisionError
from rig.progress import run_logged

logger = logging.getLogger(__name__)

DEBIAN_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
DEFAULT_HOST = "http://deb.debian.org"

# ---------------------------------------------------------------------------------------------
# Debian version ordering (dpkg's algorithm), so choosing "the newest" needs no dpkg call.

_Part = tuple[tuple[int, ...], int]


def _char_order(c: str) -> int:
    # dpkg: '~' sorts before everything, even the end of the string; letters before symbols.
    if c == "~":
        return -1
    if c.isalpha():
        return ord(c)
    return ord(c) + 256


def _fragment_key(text: str) -> tuple[_Part, ...]:
    parts: list[_Part] = []
    for lexical, digits in re.findall(r"(\D*)(\d*)", text):
        if not lexical and not digits:
            continue
        parts.append(((*(_char_order(c) for c in lexical), 0), int(digits or 0)))
    # An exhausted string compares as an empty fragment: a trailing ("", 0) makes "1.0" sort
    # after "1.0~rc1" and before "1.0.1", as dpkg has it.
    parts.append(((0,), 0))
    return tuple(parts)


def debian_version_key(version: str) -> tuple[int, tuple[_Part, ...], tuple[_Part, ...]]:
    """A sort key ordering Debian versions ("1:10.2.2+ds-1") the way dpkg does."""
    epoch, _, rest = version.rpartition(":") if ":" in version else ("0", "", version)
    upstream, _, revision = rest.rpartition("-") if "-" in rest else (rest, "", "0")
    return int(epoch or 0), _fragment_key(upstream), _fragment_key(revision)


def upstream_version(version: str) -> str:
    """ "1:10.2.2+ds-1" -> "10.2.2+ds": the version without epoch and Debian revision."""
    rest = version.split(":", 1)[1] if ":" in version else version
    return rest.rsplit("-", 1)[0] if "-" in rest else rest


def parse_stanzas(text: str) -> list[dict[str, str]]:
    """Debian control stanzas (`apt-cache show`, a Packages index) as field dicts; a field's
    continuation lines are kept, joined with newlines."""
    stanzas: list[dict[str, str]] = []
    for block in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        last = ""
        for line in block.splitlines():
            if line[:1] in (" ", "\t") and last:
                fields[last] += "\n" + line.strip()
            elif (m := re.match(r"^([\w.+-]+):\s?(.*)$", line)) is not None:
                last = m.group(1)
                fields[last] = m.group(2).strip()
        if fields:
            stanzas.append(fields)
    return stanzas


def parse_showsrc_versions(text: str, package: str) -> list[str]:
    """Versions of `package` in `apt-cache showsrc` output (one stanza per version/suite)."""
    versions: list[str] = []
    for fields in parse_stanzas(text):
        version = fields.get("Version")
        if fields.get("Package") == package and version and version not in versions:
            versions.append(version)
    return versions


# ---------------------------------------------------------------------------------------------
# Host packages.


# Packages dpkg had fully installed when asked: one process asks each rig start, and dpkg does
# not uninstall under a running rig (ten dpkg-query runs a start were ~0.1 s of CPU).
_installed: set[str] = set()


def missing_packages(names: Iterable[str]) -> list[str]:
    """The packages among `names` that dpkg does not have fully installed (one dpkg-query)."""
    wanted = [n for n in dict.fromkeys(names) if n not in _installed]
    if not wanted:
        return []
    # A line per package dpkg knows, its three-letter status first ("ii " installed); an
    # unknown name gets no line (and exit status 1): missing, as is any status but "ii".
    result = subprocess.run(
        ["dpkg-query", "-W", "-f=${db:Status-Abbrev} ${Package}\n", "--", *wanted],
        capture_output=True,
        text=True,
        check=False,
    )
    for line in result.stdout.splitlines():
        fields = line.split()
        if len(fields) == 2 and fields[0].startswith("ii"):
            _installed.add(fields[1])
    return [n for n in wanted if n not in _installed]


def ensure_packages(names: Sequence[str], log: Path, why: str) -> None:
    """apt-get install whatever of `names` is missing; a clear error if we cannot."""
    if shutil.which("dpkg-query") is None:
        raise ProvisionError(
            f"{why}: needs Debian packages {' '.join(names)}; this host has no dpkg"
        )
    missing = missing_packages(names)
    if not missing:
        return
    if os.geteuid() != 0:
        raise ProvisionError(
            f"{why}: missing Debian packages and not root to install them; "
            f"run as root: apt-get install {' '.join(missing)}"
        )
    logger.info(f"installing Debian packages: {' '.join(missing)}")
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing]
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    try:
        run_logged(install, log, "apt-get install", env=env)
    except ProvisionError:
        # Usually stale or never-fetched package lists (fresh containers ship none): refresh once.
        run_logged(["apt-get", "update", "-q"], log, "apt-get update", env=env)
        run_logged(install, log, "apt-get install", env=env)


def system_mirror(archive: str = "debian") -> str:
    """The mirror of Debian's `archive` ("debian", "debian-security") the host's own apt uses,
    so the private apt reaches the same host."""
    candidates: list[str] = []
    etc = Path("/etc/apt")
    for path in [etc / "sources.list", *sorted((etc / "sources.list.d").glob("*"))]:
        try:
            text = path.read_text()
        except OSError:
            continue
        candidates += mirrors_in_sources(text, archive)
    return candidates[0] if candidates else f"{DEFAULT_HOST}/{archive}"


def mirrors_in_sources(text: str, archive: str = "debian") -> list[str]:
    """URIs of Debian's `archive` (not third-party ones) in a one-line or deb822 sources file."""
    uris = re.findall(r"^\s*URIs:\s*(.+)$", text, re.MULTILINE)
    uris += re.findall(r"^\s*deb(?:-src)?\s+(?:\[[^]]*\]\s+)?(\S+)", text, re.MULTILINE)
    found = []
    for uri in (u for line in uris for u in line.split()):
        if re.match(r"^https?://", uri) and uri.rstrip("/").endswith(f"/{archive}"):
            found.append(uri.rstrip("/"))
    return found


# ---------------------------------------------------------------------------------------------
# Private apt configurations.


@dataclass(frozen=True)
class AptLine:
    """One sources.list line: `deb` (binary packages) or `deb-src`, of one suite's main."""

    kind: str
    uri: str
    suite: str

    def text(self) -> str:
        return f"{self.kind} [signed-by={DEBIAN_KEYRING}] {self.uri} {self.suite} main\n"


class PrivateApt:
    """An apt configuration of our own under `root`: its own sources, lists, archives and an
    empty dpkg status, so nothing the host has configured or installed shapes its answers."""

    def __init__(self, root: Path, lines: Sequence[AptLine]) -> None:
        self.root = root
        self.lines = tuple(lines)

    @property
    def config(self) -> Path:
        return self.root / "apt.conf"

    @property
    def lists(self) -> Path:
        return self.root / "state" / "lists"

    def sources_list(self) -> str:
        return "".join(line.text() for line in self.lines)

    def apt_conf(self) -> str:
        r = self.root
        return "\n".join(
            [
                # Read no system apt.conf.d: their hooks and index settings are not ours to inherit.
                f'Dir::Etc "{r}/etc";',
                'Dir::Etc::main "/dev/null";',
                f'Dir::Etc::parts "{r}/etc/apt.conf.d";',
                f'Dir::Etc::sourcelist "{r}/etc/sources.list";',
                f'Dir::Etc::sourceparts "{r}/etc/sources.list.d";',
                f'Dir::Etc::preferencesparts "{r}/etc/preferences.d";',
                f'Dir::Etc::trustedparts "{r}/etc/trusted.gpg.d";',
                f'Dir::State "{r}/state";',
                # Not the host's dpkg status: an installed kernel must not become a candidate.
                f'Dir::State::status "{r}/state/status";',
                f'Dir::Cache "{r}/cache";',
                # One binary cache of the indexes, not two: each is ~50 MB for sid alone.
                'Dir::Cache::srcpkgcache "";',
                f'Dir::Log "{r}/log";',
                'Acquire::Languages "none";',
                'Acquire::GzipIndexes "true";',
                # Our directories live in root's cache, which apt's `_apt` download user cannot
                # enter: download as root directly instead of warning about it on every call.
                'APT::Sandbox::User "root";',
                # The mirror reachable here can be a frozen copy whose Release is past Valid-Until;
                # the signature is still checked, only the freshness date is not.
                'Acquire::Check-Valid-Until "false";',
                "",
            ]
        )

    def _prepare(self) -> None:
        if not DEBIAN_KEYRING.is_file():
            raise ProvisionError(
                f"{DEBIAN_KEYRING} is missing: install the debian-archive-keyring package"
            )
        for sub in (
            "etc/apt.conf.d",
            "etc/sources.list.d",
            "etc/preferences.d",
            "etc/trusted.gpg.d",
            "state/lists/partial",
            "cache/archives/partial",
            "log",
        ):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        (self.root / "state" / "status").touch()
        (self.root / "etc/sources.list").write_text(self.sources_list())
        self.config.write_text(self.apt_conf())

    def env(self) -> dict[str, str]:
        return {"APT_CONFIG": str(self.config), "DEBIAN_FRONTEND": "noninteractive"}

    def update(self, log: Path) -> None:
        """Fetch and verify the suites' indexes (fails if a Release does not verify)."""
        self._prepare()
        suites = " ".join(line.suite for line in self.lines)
        # A bad signature already fails apt-get update; Error-Mode=any also fails it on a
        # transient fetch error, which would otherwise leave us choosing from a stale index.
        try:
            run_logged(
                ["apt-get", "update", "-q", "-o", "APT::Update::Error-Mode=any"],
                log,
                f"apt-get update (private, {suites})",
                env=self.env(),
            )
        except ProvisionError as e:
            if "NO_PUBKEY" in e.tail:
                raise ProvisionError(
                    f"{e.args[0]}: a Release file is signed by a key not in {DEBIAN_KEYRING}"
                    " (a newer debian-archive-keyring is needed)",
                    e.log,
                    e.tail,
                ) from e
            raise

    def query(self, *args: str) -> str:
        """An apt-cache question answered from this configuration's indexes only."""
        try:
            result = subprocess.run(
                ["apt-cache", *args],
                capture_output=True,
                text=True,
                env=dict(os.environ, **self.env()),
                check=False,
            )
        except OSError as e:
            raise ProvisionError(f"cannot run apt-cache: {e} (is this a Debian host?)") from e
        return result.stdout


class SourceArchive(PrivateApt):
    """A private apt with only `deb-src` lines for `suites`: source packages to build from."""

    def __init__(self, root: Path, suites: Sequence[str], mirror: str | None = None) -> None:
        self.mirror = mirror or system_mirror()
        self.suites = tuple(suites)
        super().__init__(root, [AptLine("deb-src", self.mirror, s) for s in self.suites])

    def versions(self, package: str) -> list[str]:
        """Every version of a source package the suites list, newest first."""
        found = parse_showsrc_versions(self.query("showsrc", "--only-source", package), package)
        return sorted(found, key=debian_version_key, reverse=True)

    def fetch(self, package: str, version: str, dest: Path, log: Path) -> Path:
        """Download (hash-checked against the signed index) and unpack one source version.

        `apt-get source` runs dpkg-source, which applies Debian's patches: those are what
        make a repacked (+ds) upstream tarball without firmware blobs configure at all.
        Returns the unpacked source tree.
        """
        dest.mkdir(parents=True, exist_ok=True)
        tree = dest / f"{package}-src"
        run_logged(
            ["apt-get", "source", "-q", f"{package}={version}"],
            log,
            f"apt-get source {package}={version}",
            cwd=dest,
            env=self.env(),
        )
        trees = [p for p in dest.iterdir() if p.is_dir() and p.name.startswith(f"{package}-")]
        if len(trees) != 1:
            raise ProvisionError(
                f"apt-get source {package}={version}: nothing unpacked in {dest}", log
            )
        trees[0].rename(tree)
        return tree
