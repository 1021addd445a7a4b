"""Reading a kernel's module metadata (modules.dep, modules.builtin, bzImage header).

Pure functions over files, so the guest's module needs can be resolved and checked on the host
without running depmod/modprobe against a foreign kernel.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from rig.errors import ProvisionError

_MODULE_SUFFIX = re.compile(r"\.ko(\.(xz|zst|gz))?$")


def module_name(path: str) -> str:
    """'kernel/drivers/virtio/virtio_pci.ko.xz' -> 'virtio_pci' (dashes folded as modprobe does)."""
    base = path.rsplit("/", 1)[-1]
    return _MODULE_SUFFIX.sub("", base).replace("-", "_")


@dataclass(frozen=True)
class ModuleIndex:
    """What a modules tree offers: loadable modules (name -> path, deps) and built-ins."""

    paths: dict[str, str]
    deps: dict[str, tuple[str, ...]]
    softdeps: dict[str, tuple[str, ...]]
    builtin: frozenset[str]

    @classmethod
    def parse(
        cls, modules_dep: str, modules_builtin: str = "", modules_softdep: str = ""
    ) -> ModuleIndex:
        paths: dict[str, str] = {}
        deps: dict[str, tuple[str, ...]] = {}
        for line in modules_dep.splitlines():
            if ":" not in line:
                continue
            target, _, rest = line.partition(":")
            name = module_name(target.strip())
            paths[name] = target.strip()
            deps[name] = tuple(module_name(d) for d in rest.split())
        softdeps: dict[str, tuple[str, ...]] = {}
        for line in modules_softdep.splitlines():
            # "softdep ext4 pre: crc32c post: foo": only pre-deps must load first.
            words = line.split()
            if len(words) < 3 or words[0] != "softdep":
                continue
            pre: list[str] = []
            section = ""
            for word in words[2:]:
                if word.endswith(":"):
                    section = word
                elif section == "pre:":
                    pre.append(word.replace("-", "_"))
            softdeps[words[1].replace("-", "_")] = tuple(pre)
        builtin = frozenset(
            module_name(line.strip()) for line in modules_builtin.splitlines() if line.strip()
        )
        return cls(paths, deps, softdeps, builtin)

    @classmethod
    def load(cls, modules_dir: Path) -> ModuleIndex:
        dep = modules_dir / "modules.dep"
        if not dep.is_file():
            raise ProvisionError(f"{modules_dir} has no modules.dep (run depmod for it)")

        def optional(name: str) -> str:
            path = modules_dir / name
            return path.read_text() if path.is_file() else ""

        return cls.parse(dep.read_text(), optional("modules.builtin"), optional("modules.softdep"))

    def has(self, name: str) -> bool:
        name = name.replace("-", "_")
        return name in self.builtin or name in self.paths

    def load_order(self, names: list[str]) -> list[str]:
        """The module files to insmod, dependencies first, for `names` (built-ins skipped).

        Raises ProvisionError naming a module that is neither loadable nor built in.
        """
        order: list[str] = []
        seen: set[str] = set()

        def visit(name: str, optional: bool) -> None:
            name = name.replace("-", "_")
            if name in seen or name in self.builtin:
                return
            if name not in self.paths:
                if optional:
                    return  # a soft dependency the kernel may provide differently
                raise ProvisionError(f"the guest kernel has no module {name} (nor built in)")
            seen.add(name)
            for soft in self.softdeps.get(name, ()):
                visit(soft, optional=True)
            for dep in self.deps[name]:
                visit(dep, optional=False)
            order.append(self.paths[name])

        for name in names:
            visit(name, optional=False)
        return order


def config_value(config_text: str, option: str) -> str | None:
    """The value of CONFIG_<option> in a kernel .config ('y', 'm', ...), None if unset."""
    match = re.search(rf"^CONFIG_{re.escape(option)}=(.*)$", config_text, re.MULTILINE)
    return match.group(1) if match else None


def bzimage_release(image: bytes) -> str | None:
    """The release a bzImage announces in its setup header (`uname -r`), None if not a bzImage.

    The header's kernel_version field (offset 0x20e) points, relative to 0x200, at the
    version string "6.1.0-56-cloud-amd64 (debian-kernel@...) #1 SMP ...".
    """
    if len(image) < 0x210 or image[0x202:0x206] != b"HdrS":
        return None
    offset = int.from_bytes(image[0x20E:0x210], "little") + 0x200
    end = image.find(b"\0", offset, offset + 512)
    if offset >= len(image) or end < 0:
        return None
    words = image[offset:end].decode("ascii", "replace").split()
    return words[0] if words else None
