"""Kernel sources to build from: identify them (for cache keys) and unpack them (for builds).

Debian's linux-source-<series> package carries the packaged kernel's source, Debian's patches
applied, as one tarball under /usr/src: it is found in the rig's private apt index of a suite
(every suite at once unless one is named), fetched with `apt-get download` and unpacked with
dpkg-deb and tar, nothing is installed on the host. A user's tree is identified by its
git state (or, outside git, by every file's size and mtime) and copied, so the rig never
writes into it.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path

from rig.errors import ProvisionError
from rig.progress import run_logged
from rig.provision import debs
from rig.provision.apt import upstream_version
from rig.provision.kbuildspec import DebianSource, Source, TreeSource


@dataclass(frozen=True)
class ResolvedSource:
    """A source pinned down: what it is, in words and as a cache key input."""

    spec: Source
    label: str  # "linux-source-6.1=6.1.192-2", or the tree's path
    identity: str  # changes whenever the source's contents may have
    version: str  # the kernel version its Makefile announces, "6.1.192"


def kernel_version(makefile: str) -> str:
    """VERSION.PATCHLEVEL.SUBLEVEL from a top-level kernel Makefile."""
    fields = dict(
        re.findall(r"^(VERSION|PATCHLEVEL|SUBLEVEL)\s*=\s*(\d*)\s*$", makefile, re.MULTILINE)
    )
    if "VERSION" not in fields or "PATCHLEVEL" not in fields:
        raise ProvisionError("not a kernel Makefile: no VERSION/PATCHLEVEL")
    sub = fields.get("SUBLEVEL") or "0"
    return f"{fields['VERSION']}.{fields['PATCHLEVEL']}.{sub}"


_SOURCE_PACKAGE = re.compile(r"^linux-source-(\d+)\.(\d+)$")


def resolve(source: Source, log: Path) -> ResolvedSource:
    if isinstance(source, DebianSource):
        archive = debs.DebArchive(source.suite)
        archive.ensure_index(log)
        try:
            pinned = _pin(archive, source)
        except ProvisionError:
            age = archive.age()
            if age is not None and age < debs.INDEX_FRESH:
                raise
            # A version superseded since the index was fetched: a fresh index may list it.
            archive.ensure_index(log, max_age=0)
            pinned = _pin(archive, source)
        assert pinned.version is not None
        label = f"{pinned.package}={pinned.version}"
        # 6.1.192-2 -> 6.1.192: Debian keeps the upstream version in its own.
        upstream = upstream_version(pinned.version)
        return ResolvedSource(pinned, label, f"debian:{label}", upstream)
    tree = source.path
    return ResolvedSource(
        source,
        str(tree),
        f"tree:{tree}:{tree_fingerprint(tree)}",
        kernel_version((tree / "Makefile").read_text(errors="replace")),
    )


def _pin(archive: debs.DebArchive, source: DebianSource) -> DebianSource:
    """`source` with its series and version decided by the archive's index."""
    where = "Debian's " + ", ".join(dict.fromkeys(line.suite for line in archive.lines))
    series = source.series or newest_series(
        archive.query("search", "--names-only", "^linux-source-")
    )
    if series is None:
        raise ProvisionError(f"{where} list no linux-source-<series> package")
    pinned = replace(source, series=series)
    version = source.version or archive.candidate(pinned.package)
    # apt-cache reads a name it does not know as a pattern (linux-source-6.1 matches
    # linux-source-6.12): only the index stanza of that very package counts.
    if version is None or archive.fields(pinned.package, version) is None:
        listed = ", ".join(archive.versions(pinned.package)) or "none"
        what = pinned.package + (f"={version}" if source.version else "")
        raise ProvisionError(f"{where} list no {what} (versions listed: {listed})")
    return replace(pinned, version=version)


def newest_series(search: str) -> str | None:
    """The highest <series> of the linux-source-<series> packages an `apt-cache search` lists."""
    found = [
        (int(m.group(1)), int(m.group(2)))
        for line in search.splitlines()
        if (m := _SOURCE_PACKAGE.match(line.split(" - ")[0].strip()))
    ]
    if not found:
        return None
    major, minor = max(found)
    return f"{major}.{minor}"


def tree_fingerprint(tree: Path) -> str:
    """A digest that changes when the tree's contents may have changed.

    In git: HEAD, the diff against it and the untracked files' sizes and mtimes. Elsewhere:
    every file's path, size and mtime (hashing 1.5 GB of contents would take longer than a
    build of the few files that changed).
    """
    h = hashlib.sha256()
    git = _git_state(tree)
    if git is not None:
        h.update(git)
        return "git-" + h.hexdigest()[:16]
    for dirpath, dirnames, files in os.walk(tree):
        dirnames[:] = sorted(d for d in dirnames if d != ".git")
        for name in sorted(files):
            p = Path(dirpath) / name
            st = p.lstat()
            h.update(f"{p.relative_to(tree)}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return "files-" + h.hexdigest()[:16]


def _git_state(tree: Path) -> bytes | None:
    def git(*args: str) -> bytes | None:
        try:
            proc = subprocess.run(["git", "-C", str(tree), *args], capture_output=True, check=False)
        except OSError:
            return None
        return proc.stdout if proc.returncode == 0 else None

    top = git("rev-parse", "--show-toplevel")
    if top is None or Path(top.decode().strip()).resolve() != tree.resolve():
        return None
    head = git("rev-parse", "HEAD") or b"no-head"
    diff = git("diff", "HEAD", "--binary") or b""
    untracked = git("ls-files", "--others", "--exclude-standard", "-z") or b""
    state = [head, hashlib.sha256(diff).digest()]
    for name in sorted(untracked.split(b"\0")):
        if name:
            st = (tree / name.decode(errors="surrogateescape")).lstat()
            state.append(name + f":{st.st_size}:{st.st_mtime_ns}".encode())
    return b"\n".join(state)


def populate(source: ResolvedSource, dest: Path, log: Path) -> None:
    """Unpack the source into the empty directory `dest`."""
    if isinstance(source.spec, DebianSource):
        _unpack_debian(source.spec, dest, log)
    else:
        _copy_tree(source.spec, dest, log)


def _unpack_debian(spec: DebianSource, dest: Path, log: Path) -> None:
    version = spec.version
    assert version is not None  # resolve() pinned it
    scratch = dest.parent / f".{dest.name}.deb"
    shutil.rmtree(scratch, ignore_errors=True)
    try:
        deb = debs.DebArchive(spec.suite).download(spec.package, version, scratch, log)
        debs.unpack(deb, scratch / "tree", log)
        tarballs = sorted((scratch / "tree" / "usr" / "src").glob("linux-source-*.tar.*"))
        if len(tarballs) != 1:
            raise ProvisionError(
                f"{spec.package}={version}: expected one "
                f"usr/src/linux-source-*.tar.* in the package, found "
                f"{len(tarballs)}",
                log,
            )
        dest.mkdir(parents=True)
        run_logged(
            ["tar", "-x", "-f", tarballs[0], "-C", dest, "--strip-components=1"],
            log,
            f"unpacking {tarballs[0].name}",
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _copy_tree(spec: TreeSource, dest: Path, log: Path) -> None:
    dest.mkdir(parents=True)
    # tar rather than copytree: it keeps symlinks and modes and is several times faster.
    run_logged(
        [
            "sh",
            "-c",
            'tar -C "$1" --exclude=./.git -c -f - . | tar -C "$2" -x -f -',
            "copy-tree",
            spec.path,
            dest,
        ],
        log,
        f"copying {spec.path}",
    )
    if (dest / ".config").exists() or (dest / "include" / "config").exists():
        # Built in place: an O= build refuses a tree that is not clean.
        run_logged(["make", "-C", dest, "mrproper"], log, "make mrproper (copied tree)")
