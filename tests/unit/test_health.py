"""rig.formats.health: the health buffer's fields, and the built-in buffer in them."""

from __future__ import annotations

import pytest

from rig import builtin
from rig.formats import health


def test_fields_tile_the_64_bytes() -> None:
    end = 0
    for f in health.FIELDS:
        assert f.offset == end, f
        end += f.size
    assert end == 64


def test_the_built_in_buffer_decodes_to_what_it_was_built_from() -> None:
    fields = {d.field.name: d for d in health.decode(builtin.health_buffer())}
    assert fields["assert_var[0]"].value == 0xA5A5
    assert fields["assert_exit_ptr"].value == 0x0040A100
    assert fields["hw_id"].value == 0x1F5
    assert fields["synd"].value == 1 and fields["synd"].meaning == "firmware internal error"
    assert fields["ext_synd"].value == 7 and fields["ext_synd"].meaning == ""


@pytest.mark.parametrize("synd,meaning", [(0x10, "high temperature"), (0x42, "unknown syndrome")])
def test_syndromes_are_named(synd: int, meaning: str) -> None:
    (d,) = [d for d in health.decode(health.encode({"synd": synd})) if d.field.name == "synd"]
    assert d.meaning == meaning


def test_a_short_buffer_decodes_what_it_holds() -> None:
    assert [d.field.name for d in health.decode(bytes(8))] == ["assert_var[0]", "assert_var[1]"]
