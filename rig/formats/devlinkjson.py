"""What `devlink -j region dump` and `devlink -j region read` print.

iproute2 6.1 prints one object named after the command, holding an "address" and a "data"
(bytes as numbers) pair per chunk of up to 256 bytes, the keys repeated in one object:
    {"dump":{"address":0,"data":[0,20,149,...],"address":256,"data":[...],...}}
    {"read":{"address":983060,"data":[...]}}
(`-p` only adds white space.) Python's json keeps the last of repeated keys, so the pairs are
parsed as lists.
"""

from __future__ import annotations

import json
from typing import Any

from rig.formats.dumptext import DumpFormatError


class RegionJsonError(ValueError):
    """Not the region JSON devlink prints; the message says why."""


def region_chunks(text: str) -> list[tuple[int, bytes]]:
    """(address, bytes) of every chunk, in order. Raises RegionJsonError."""
    try:
        doc = json.loads(text, object_pairs_hook=list)
    except ValueError as e:
        raise RegionJsonError(f"invalid JSON: {e}") from None
    if not _is_object(doc):
        raise RegionJsonError("JSON that is not an object")
    chunks: list[tuple[int, bytes]] = []
    for _, body in doc:  # "dump" or "read" (older iproute2 may name the region instead)
        addr: int | None = None
        for key, value in body if _is_object(body) else []:
            if key == "address":
                addr = _address(value)
            elif key == "data":
                if addr is None:
                    raise RegionJsonError("data before any address")
                chunks.append((addr, _bytes(value, addr)))
                addr = None
    return chunks


def parse_region_json(text: str, source: str) -> tuple[int, bytes]:
    """Region JSON as (start address, bytes); the chunks must follow each other."""
    try:
        chunks = region_chunks(text)
    except RegionJsonError as e:
        raise DumpFormatError(f"{source}: not devlink region JSON: {e}") from None
    if not chunks:
        raise DumpFormatError(f"{source}: devlink region JSON with no address/data pairs")
    start = chunks[0][0]
    out = bytearray()
    for addr, data in chunks:
        if addr != start + len(out):
            raise DumpFormatError(
                f"{source}: devlink region JSON chunk at {addr:#x} does not follow the previous"
                f" one (expected {start + len(out):#x})"
            )
        out += data
    return start, bytes(out)


def _is_object(value: Any) -> bool:
    """A JSON object, as object_pairs_hook=list leaves it: a list of (key, value) tuples."""
    return isinstance(value, list) and all(isinstance(p, tuple) for p in value)


def _address(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise RegionJsonError(f"address {value!r} is not a non-negative integer")
    return value


def _bytes(value: Any, addr: int) -> bytes:
    # type(), not isinstance(): a JSON true is a bool, which is an int subclass. map() keeps
    # the check in C: a 1 MiB dump is a million numbers.
    if not isinstance(value, list) or not set(map(type, value)) <= {int}:
        raise RegionJsonError(f"data at {addr:#x} is not a list of numbers")
    try:
        return bytes(value)
    except ValueError:
        raise RegionJsonError(f"data at {addr:#x} holds a number outside 0..255") from None
