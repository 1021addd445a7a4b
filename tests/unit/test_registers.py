from __future__ import annotations

from cx3 import layout as cr
from rig.formats.registers import explain


def test_explain_names_registers_and_flags_the_rest() -> None:
    image = bytes(cr.SIZE)
    snap = bytearray(image)
    snap[cr.CATAS_OFFSET : cr.CATAS_OFFSET + 4] = b"\x0f\xff\xff\xff"
    snap[cr.BLOCK_VOLATILE + 3] = 1
    snap[0x5000:0x5002] = b"\x09\x09"
    snap[cr.CR_FILTER + 3] = 0x40
    changes = explain(image, bytes(snap))
    assert [(c.offset, c.length, c.register) for c in changes] == [
        (0x5000, 2, None),
        (cr.CATAS_OFFSET, 4, "catas buffer"),
        (cr.BLOCK_VOLATILE + 3, 1, "block-volatile word"),
        (cr.CR_FILTER + 3, 1, "CR filter"),
    ]
    assert changes[0].as_dict()["why"] == "UNEXPLAINED"


def test_run_split_at_register_edge() -> None:
    image = bytes(cr.SIZE)
    snap = bytearray(image)
    # The last health byte and the block-volatile word are adjacent but different registers.
    snap[cr.BLOCK_VOLATILE - 1 : cr.BLOCK_VOLATILE + 4] = b"\xff" * 5
    names = [c.register for c in explain(image, bytes(snap))]
    assert names == ["health buffer", "block-volatile word"]


def test_equal_images_have_no_changes() -> None:
    assert explain(bytes(4096 * 3), bytes(4096 * 3)) == []
