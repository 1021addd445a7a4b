"""A minimal writer for the kernel's initramfs format (cpio "newc").

Written here rather than with cpio(1) so device nodes need no root, every file gets uid 0 and
a fixed mtime (same inputs, same bytes), and the modules tree streams from where it lies.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO

_MAGIC = b"070701"


def _pad(n: int) -> bytes:
    return b"\0" * (-n % 4)


class CpioWriter:
    """Appends entries to `out`; parents must be added before their children."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._ino = 0
        self._names: set[str] = set()

    def _entry(
        self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)
    ) -> None:
        name = name.strip("/") or "."
        if name in self._names:
            raise ValueError(f"duplicate initramfs entry {name}")
        self._names.add(name)
        self._ino += 1
        encoded = name.encode() + b"\0"
        fields = (self._ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(encoded), 0)
        header = _MAGIC + b"".join(b"%08X" % f for f in fields)
        self._out.write(header + encoded + _pad(len(header) + len(encoded)))
        self._out.write(data + _pad(len(data)))

    def directory(self, name: str, mode: int = 0o755) -> None:
        self._entry(name, stat.S_IFDIR | mode)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._entry(name, stat.S_IFREG | mode, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def char_device(self, name: str, major: int, minor: int, mode: int = 0o600) -> None:
        self._entry(name, stat.S_IFCHR | mode, rdev=(major, minor))

    def tree(self, name: str, source: Path) -> None:
        """`source` (a directory) and everything below it, as `name`; sockets etc. skipped."""
        self.directory(name, stat.S_IMODE(source.stat().st_mode))
        for dirpath, dirnames, filenames in os.walk(source):
            dirnames.sort()
            rel = os.path.relpath(dirpath, source)
            base = name if rel == "." else f"{name}/{rel}"
            for entry in sorted(dirnames) + sorted(filenames):
                path = Path(dirpath) / entry
                st = path.lstat()
                if stat.S_ISLNK(st.st_mode):
                    self.symlink(f"{base}/{entry}", os.readlink(path))
                elif stat.S_ISDIR(st.st_mode):
                    self.directory(f"{base}/{entry}", stat.S_IMODE(st.st_mode))
                elif stat.S_ISREG(st.st_mode):
                    self.file(f"{base}/{entry}", path.read_bytes(), stat.S_IMODE(st.st_mode))

    def close(self) -> None:
        self._entry("TRAILER!!!", 0)
