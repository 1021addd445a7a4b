"""Where the snapshot of a loaded CR-space image may rightly differ from the image.

A crdump copies BAR0 as the device presents it at that moment: the model's live registers,
the words the driver itself writes just before the dump, and the injected catas words all
replace what the loaded image held there. Everything else must be the image, byte for byte.
The registers are the device model's own table, cx3.layout.REGISTERS.
"""

from __future__ import annotations

from dataclasses import dataclass

from cx3.layout import register_at


@dataclass(frozen=True)
class Change:
    offset: int
    length: int
    register: str | None  # None: unexplained — a failure

    def as_dict(self) -> dict[str, object]:
        reg = register_at(self.offset)
        return {
            "offset": self.offset,
            "length": self.length,
            "register": self.register,
            "why": reg.why if reg else "UNEXPLAINED",
        }


def explain(image: bytes, snapshot: bytes) -> list[Change]:
    """Runs of bytes where `snapshot` differs from `image`, each with the register it is in.

    Runs are split at 4 KiB boundaries (no register spans one) and at register edges.
    """
    changes: list[Change] = []
    n = min(len(image), len(snapshot))
    for base in range(0, n, 4096):
        end = min(base + 4096, n)
        if image[base:end] == snapshot[base:end]:
            continue
        start = -1
        for off in range(base, end):
            differs = image[off] != snapshot[off]
            if start >= 0 and (not differs or register_at(off) != register_at(start)):
                changes.append(_change(start, off))
                start = -1
            if differs and start < 0:
                start = off
        if start >= 0:
            changes.append(_change(start, end))
    return changes


def _change(start: int, end: int) -> Change:
    reg = register_at(start)
    return Change(start, end - start, reg.name if reg else None)
