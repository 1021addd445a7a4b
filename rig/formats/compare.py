"""Byte-for-byte comparison of region snapshots read different ways against the truth."""

from __future__ import annotations

from dataclasses import dataclass, field

MAX_OFFSETS = 16  # first differing offsets kept per comparison


@dataclass
class Difference:
    """How `got` differs from `expected`."""

    count: int  # differing bytes (a length mismatch counts the missing/extra bytes)
    first_offsets: list[int] = field(default_factory=list)
    expected_size: int = 0
    got_size: int = 0

    @property
    def equal(self) -> bool:
        return self.count == 0


def diff(expected: bytes, got: bytes) -> Difference:
    n = min(len(expected), len(got))
    count = abs(len(expected) - len(got))
    first: list[int] = []
    # Compare 4 KiB blocks first: snapshots are 1 MiB and almost always equal.
    for base in range(0, n, 4096):
        a, b = expected[base : base + 4096], got[base : base + 4096]
        if a == b:
            continue
        for i, (x, y) in enumerate(zip(a, b, strict=False)):
            if x != y:
                count += 1
                if len(first) < MAX_OFFSETS:
                    first.append(base + i)
    if len(first) < MAX_OFFSETS and len(expected) != len(got):
        first.append(n)
    return Difference(count, first, len(expected), len(got))


def hexdump_diff(
    expected: bytes,
    got: bytes,
    labels: tuple[str, str] = ("truth", "got"),
    context: int = 0,
    max_lines: int = 64,
    base: int = 0,
) -> str:
    """A readable diff: each differing 16-byte line twice, with ^^ under changed bytes.
    `base`: the offset of the two slices in their region, for the line addresses."""
    out: list[str] = []
    n = max(len(expected), len(got))
    width = max(len(x) for x in labels)
    shown = 0
    for off in range(0, n, 16):
        a, b = expected[off : off + 16], got[off : off + 16]
        if a == b:
            continue
        if shown >= max_lines:
            out.append("... (more differences not shown)")
            break
        shown += 1
        out.append(f"{labels[0]:>{width}} {base + off:08x}  {_hex(a)}")
        out.append(f"{labels[1]:>{width}} {base + off:08x}  {_hex(b)}")
        marks = "".join(
            "^^ " if i >= len(a) or i >= len(b) or a[i] != b[i] else "   " for i in range(16)
        )
        out.append(" " * (width + 11) + marks.rstrip())
    return "\n".join(out) + ("\n" if out else "")


def _hex(chunk: bytes) -> str:
    return " ".join(f"{x:02x}" for x in chunk).ljust(47)
