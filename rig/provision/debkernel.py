"""Which of Debian's packages make a kernel: from `deb:SUITE` or `deb:PACKAGE[=VERSION]` to
the exact .debs (package and version each) that hold its image, modules and config.

Debian ships a kernel three ways, and the index says which (its Depends):
- a meta package (linux-image-cloud-amd64) depends on exactly one linux-image-<release>
  (= version): follow it. deb:SUITE is what the suite's meta package installs.
- older suites (bookworm, trixie) put everything in linux-image-<release> (signed) or
  linux-image-<release>-unsigned;
- newer ones (sid, trixie-backports) split it: linux-image-<release> holds no files and
  depends on linux-binary-<release> (the image; -unsigned- variant beside it),
  linux-modules-<release> and linux-base-<release> (config and module lists).
Where a meta package leads to a signed image and the suite has the unsigned one at the same
version, the unsigned one is taken: the same kernel without the secure-boot signature QEMU's
-kernel never checks (and the one the rig has always used for bookworm, so its cache entries
stay valid). A self-contained package the user names is taken as named.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from rig.errors import ProvisionError, UsageError

IMAGE_PREFIX = "linux-image-"

# (package, version) -> its index stanza, None if the index does not list it.
Lookup = Callable[[str, str], "dict[str, str] | None"]


@dataclass(frozen=True)
class KernelDebs:
    """The packages of one Debian kernel, all at `version`."""

    image: str  # linux-image-<release>: the name a user knows the kernel by
    version: str
    packages: tuple[str, ...]  # whose .debs, unpacked together, hold the kernel

    @property
    def release(self) -> str:
        return self.image.removeprefix(IMAGE_PREFIX).removesuffix("-unsigned")

    @property
    def origin(self) -> str:
        """How a kernel entry names where it came from: every package=version it unpacked."""
        return "debian:" + ",".join(f"{p}={self.version}" for p in self.packages)


def exact_depends(fields: dict[str, str]) -> dict[str, str]:
    """name -> version of the Depends pinned with `(= version)` (first alternative of each)."""
    pinned: dict[str, str] = {}
    for group in fields.get("Depends", "").replace("\n", " ").split(","):
        first = group.split("|")[0].strip()
        match = re.fullmatch(r"([a-z0-9][a-z0-9.+-]*)(?::\S+)?\s*\(\s*=\s*([^)\s]+)\s*\)", first)
        if match is not None:
            pinned[match.group(1)] = match.group(2)
    return pinned


def resolve(lookup: Lookup, package: str, version: str, depth: int = 0) -> KernelDebs:
    """The packages that make the kernel `package`=`version` names (see the module docstring)."""
    if not package.startswith(IMAGE_PREFIX) or package.endswith("-dbg"):
        raise UsageError(f"deb:{package}: not a kernel image package (linux-image-*)")
    fields = lookup(package, version)
    if fields is None:
        raise ProvisionError(f"the index lists no {package}={version}")
    pinned = exact_depends(fields)
    release = package.removeprefix(IMAGE_PREFIX)
    parts = [f"linux-{kind}-{release}" for kind in ("binary", "modules", "base")]
    if parts[0] in pinned:
        binary = f"linux-binary-unsigned-{release}"
        if lookup(binary, version) is None:
            binary = parts[0]
        return KernelDebs(package, version, (binary, *(p for p in parts[1:] if p in pinned)))
    images = {n: v for n, v in pinned.items() if n.startswith(IMAGE_PREFIX)}
    if images:
        if len(images) != 1 or depth > 2:
            raise ProvisionError(f"{package}={version}: cannot tell its kernel from {images}")
        [(name, pinned_version)] = images.items()
        return resolve(lookup, name, pinned_version, depth + 1)
    # A package the user named is taken as named; one a meta package chose, unsigned if it can.
    unsigned = f"{package}-unsigned"
    if depth > 0 and not package.endswith("-unsigned") and lookup(unsigned, version) is not None:
        package = unsigned
    return KernelDebs(package, version, (package,))


def meta_package(flavour: str) -> str:
    """The meta package that installs a suite's kernel of `flavour`."""
    return f"{IMAGE_PREFIX}{flavour}"
