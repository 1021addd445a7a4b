"""devlink's region JSON, as iproute2 6.1 prints it in the guest (keys repeated per chunk)."""

from __future__ import annotations

import pytest

from rig.formats.devlinkjson import RegionJsonError, parse_region_json, region_chunks
from rig.formats.dumptext import DumpFormatError

DUMP = '{"dump":{"address":0,"data":[0,20,149,220],"address":4,"data":[255]}}'


def test_every_repeated_pair_is_a_chunk() -> None:
    assert region_chunks(DUMP) == [(0, bytes([0, 20, 149, 220])), (4, b"\xff")]
    assert parse_region_json(DUMP, "f") == (0, bytes([0, 20, 149, 220, 255]))


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('{"dump":{"address":0,"data":[0,256]}}', "data at 0x0 holds a number outside 0..255"),
        ('{"dump":{"data":[0]}}', "data before any address"),
        ('{"dump":{"address":-1,"data":[0]}}', "address -1 is not a non-negative integer"),
        ('{"dump":{"address":0,"data":"00"}}', "data at 0x0 is not a list of numbers"),
        ('{"dump":{"address":0,"data":[1,true]}}', "data at 0x0 is not a list of numbers"),
        ('{"dump":{"address":0,"data":[1,2.0]}}', "data at 0x0 is not a list of numbers"),
        ("[1]", "JSON that is not an object"),
        ('{"dump":', "invalid JSON"),
    ],
)
def test_what_is_wrong_is_said(text: str, needle: str) -> None:
    with pytest.raises(RegionJsonError, match=needle):
        region_chunks(text)


def test_chunks_must_follow_each_other() -> None:
    text = '{"read":{"address":16,"data":[1],"address":32,"data":[2]}}'
    with pytest.raises(DumpFormatError, match=r"^f: devlink region JSON chunk at 0x20 does not"):
        parse_region_json(text, "f")
