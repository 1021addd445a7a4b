"""The Debian suites the rig takes kernels and guest userspace from, and what each one reads.

A stable release is read the way an installed system sees it (the release, its -updates and
its -security), so `bookworm` reaches the 6.1 kernels Debian ships as security updates. A
backports suite is read alone: its kernel packages depend on nothing outside it.
"""

from __future__ import annotations

from rig.errors import UsageError
from rig.provision.apt import AptLine, system_mirror

# Suite -> the archive suites its apt lines name. The order is the order of `deb:` help.
SUITES: dict[str, tuple[str, ...]] = {
    "bookworm": ("bookworm", "bookworm-updates", "bookworm-security"),
    "bookworm-backports": ("bookworm-backports",),
    "trixie": ("trixie", "trixie-updates", "trixie-security"),
    "trixie-backports": ("trixie-backports",),
    "sid": ("sid",),
}
# The releases a guest userspace (root fs) can come from.
RELEASES = ("bookworm", "trixie", "sid")
# Where a kernel with no suite of its own (a package, a directory, a build) gets its userspace.
DEFAULT_SUITE = "bookworm"
# Every suite at once: where deb:PACKAGE is looked for.
ALL = "all"


def known() -> str:
    return ", ".join(SUITES)


def check_suite(name: str) -> str:
    if name not in SUITES:
        raise UsageError(f"unknown Debian suite {name!r} (known: {known()})")
    return name


def release_of(suite: str) -> str:
    """The release whose userspace a suite's kernel is made for: trixie-backports -> trixie."""
    return check_suite(suite).removesuffix("-backports")


def apt_lines(suite: str) -> list[AptLine]:
    """The binary `deb` lines for `suite` (or ALL), at the mirrors the host's apt uses."""
    names = (
        [s for group in SUITES.values() for s in group]
        if suite == ALL
        else list(SUITES[check_suite(suite)])
    )
    mirror, security = system_mirror("debian"), system_mirror("debian-security")
    return [AptLine("deb", security if s.endswith("-security") else mirror, s) for s in names]
