"""ICM page map and event queues in isolation."""

from __future__ import annotations

import struct

import pytest

from cx3.crspace import CrSpace
from cx3.dma import GuestMemory
from cx3.eq import EqContext, EqError, EventQueue, command_eqe, doorbell_eqn
from cx3.icm import IcmError, IcmMap
from cx3.pci import PciConfig
from tests.unit.cx3_guest import FakeContext

BASE = 0x2000_0000


def memory() -> tuple[GuestMemory, FakeContext]:
    ctx = FakeContext()
    ctx.add_window(BASE, 1 << 20)
    pci = PciConfig(CrSpace(on_bad_write=lambda *_: None))
    pci.write(0x04, b"\x04\x00")  # bus master
    return GuestMemory(pci, ctx), ctx


def entry(va: int, pa: int, log: int) -> bytes:
    return struct.pack(">QQ", va, pa | log)


def test_icm_map_translate_unmap() -> None:
    icm = IcmMap()
    assert icm.map_entries(entry(0x110000000, 0x5000_0000, 2) + entry(0x110004000, 0x7000, 0)) == 5
    assert icm.translate(0x110000000) == 0x5000_0000
    assert icm.translate(0x110003ABC) == 0x5000_3ABC
    assert icm.translate(0x110004010) == 0x7010
    with pytest.raises(IcmError, match="not mapped"):
        icm.translate(0x110005000)
    assert icm.unmap(0x110000000, 64) == 5  # driver always passes 64; missing pages are fine
    assert len(icm) == 0


def test_icm_remap_overlapping_va() -> None:
    icm = IcmMap()
    icm.map_entries(entry(0x0, 0x10000, 1))
    icm.map_entries(entry(0x1000, 0x90000, 0))
    assert icm.translate(0x1000) == 0x90000 and len(icm) == 2


@pytest.mark.parametrize(
    "raw,message",
    [
        (entry(0x0, 0x1000, 13), "4 KiB << 13"),
        (entry(0x10, 0x1000, 0), "not aligned"),
    ],
)
def test_icm_refuses_bad_entries(raw: bytes, message: str) -> None:
    icm = IcmMap()
    with pytest.raises(IcmError, match=message):
        icm.map_entries(entry(0x5000, 0x1000, 0) + raw)
    assert len(icm) == 0  # all or nothing


def test_icm_read_crosses_non_contiguous_pages() -> None:
    mem, ctx = memory()
    icm = IcmMap()
    icm.map_entries(entry(0x0, BASE + 0x3000, 0) + entry(0x1000, BASE, 0))
    ctx.dma_write(BASE + 0x3FFC, b"abcd")
    ctx.dma_write(BASE, b"efgh")
    assert icm.read(mem, 0xFFC, 8) == b"abcdefgh"


def test_mtt_pages_and_missing_present_bit() -> None:
    mem, ctx = memory()
    icm = IcmMap()
    icm.map_entries(entry(0x100000, BASE, 0))
    ctx.dma_write(BASE + 0x40, struct.pack(">QQ", 0xABC000 | 1, 0xDEF000 | 1))
    assert icm.mtt_pages(mem, 0x100040, 2) == [0xABC000, 0xDEF000]
    with pytest.raises(IcmError, match="entry 2"):
        icm.mtt_pages(mem, 0x100040, 3)


def test_eq_context_decode() -> None:
    raw = bytearray(64)
    struct.pack_into(">I", raw, 0, 0x00000900)
    raw[0x0C] = 16
    raw[0x17] = 3
    raw[0x1B] = 0x01
    struct.pack_into(">I", raw, 0x1C, 0x1000)
    struct.pack_into(">II", raw, 0x28, 5, 7)
    ctx = EqContext.decode(bytes(raw))
    assert (ctx.state, ctx.log_nent, ctx.intr) == (9, 16, 3)
    assert ctx.mtt_offset == 0x1_0000_1000
    assert (ctx.consumer, ctx.producer, ctx.page_offset, ctx.log_page_size) == (5, 7, 0, 0)


def test_command_eqe_layout() -> None:
    eqe = command_eqe(token=0x1234, status=0x02, out_param=0x1122334455667788)
    assert len(eqe) == 31  # the owner byte is written separately, last
    assert eqe[1] == 0x0A and eqe[6:8] == b"\x12\x34" and eqe[0x0F] == 0x02
    assert eqe[0x10:0x18] == bytes.fromhex("1122334455667788")


@pytest.mark.parametrize(
    "offset,eqn", [(0x1800, 4), (0x1808, 5), (0x1818, 7), (0x800, 0), (0x2800, 8)]
)
def test_doorbell_offsets(offset: int, eqn: int) -> None:
    assert doorbell_eqn(offset) == eqn


@pytest.mark.parametrize("offset", [0x1804, 0x1820, 0x17F8, 0x1000])
def test_not_a_doorbell(offset: int) -> None:
    assert doorbell_eqn(offset) is None


def small_eq(mem: GuestMemory, eqe_size: int = 32, eqe_offset: int = 0) -> EventQueue:
    queue = EventQueue(
        eqn=4,
        log_nent=2,
        eqe_size=eqe_size,
        eqe_offset=eqe_offset,
        page_size=4096,
        pages=[BASE + 0x8000],
        intr=0,
    )
    queue.fill_hw_owned(mem)
    return queue


def test_eq_post_owner_parity_and_overrun() -> None:
    mem, ctx = memory()
    queue = small_eq(mem)
    assert ctx.dma_read(BASE + 0x8000 + 31, 1) == b"\xcc"  # hardware-owned
    for i in range(4):
        queue.post(mem, command_eqe(i, 0, 0))
        assert ctx.dma_read(BASE + 0x8000 + 32 * i + 31, 1) == b"\0"  # pass 0: owner 0
    with pytest.raises(EqError, match="overrun"):
        queue.post(mem, command_eqe(9, 0, 0))
    queue.doorbell(4)  # consumed all four
    queue.post(mem, command_eqe(5, 0, 0))
    assert ctx.dma_read(BASE + 0x8000 + 31, 1) == b"\x80"  # pass 1: owner 1
    assert ctx.dma_read(BASE + 0x8000 + 6, 2) == b"\0\5"


def test_eq_64_byte_eqe_sits_in_upper_half() -> None:
    mem, ctx = memory()
    queue = small_eq(mem, eqe_size=64, eqe_offset=32)
    queue.post(mem, command_eqe(0x77, 0, 0))
    queue.post(mem, command_eqe(0x78, 0, 0))
    assert ctx.dma_read(BASE + 0x8000 + 32 + 6, 2) == b"\0\x77"
    assert ctx.dma_read(BASE + 0x8000 + 64 + 32 + 6, 2) == b"\0\x78"
    assert ctx.dma_read(BASE + 0x8000 + 6, 2) == b"\xcc\xcc"  # lower half untouched


def test_eq_arming() -> None:
    mem, _ = memory()
    queue = small_eq(mem)
    assert not queue.post(mem, command_eqe(1, 0, 0))  # not armed
    assert queue.doorbell(0x80000000)  # arm with one unconsumed entry: fire at once
    assert not queue.armed
    assert not queue.doorbell(0x80000001)  # consumed: arm for the next one
    assert queue.armed
    assert queue.post(mem, command_eqe(2, 0, 0))
    assert not queue.post(mem, command_eqe(3, 0, 0))  # one interrupt per arming
    queue.always_armed = True
    assert queue.post(mem, command_eqe(4, 0, 0))
