"""Config space, the BAR0 memfd and its trapped pages, and BAR2."""

from __future__ import annotations

import mmap
import struct

import pytest

from cx3 import layout
from cx3.device import Cx3Device
from tests.unit.cx3_guest import region_read, region_write
from vfio_user import CONFIG_REGION, IRQ_INTX, IRQ_MSIX, AccessError
from vfio_user.device import BAR0_REGION, BAR2_REGION


def config(dev: Cx3Device, offset: int, size: int) -> int:
    return int.from_bytes(region_read(dev, CONFIG_REGION, offset, size), "little")


def test_config_header_identity() -> None:
    dev = Cx3Device()
    assert config(dev, 0x00, 2) == 0x15B3 and config(dev, 0x02, 2) == 0x1003
    assert config(dev, 0x08, 4) == 0x02000000  # class 0x020000, revision 0
    assert config(dev, 0x2C, 2) == 0x15B3
    assert config(dev, 0x3D, 1) == 1  # INTA
    assert config(dev, 0x10, 4) == 0x4 and config(dev, 0x18, 4) == 0xC  # 64-bit; BAR2 prefetch
    assert config(dev, 0x06, 2) & 0x10  # capability list


def test_config_msix_capability_is_the_only_one() -> None:
    dev = Cx3Device()
    assert config(dev, 0x34, 1) == 0x9C
    assert config(dev, 0x9C, 1) == 0x11 and config(dev, 0x9D, 1) == 0  # MSI-X, end of list
    assert config(dev, 0x9E, 2) & 0x7FF == 127  # 128 vectors
    assert config(dev, 0xA0, 4) == 0x100000 | 2  # table in BAR2 at 1 MiB
    assert config(dev, 0xA4, 4) == 0x101000 | 2  # PBA in BAR2
    assert dev.irq_counts[IRQ_MSIX] == 128 and dev.irq_counts[IRQ_INTX] == 1


def test_config_writes_follow_the_writable_mask() -> None:
    dev = Cx3Device()
    region_write(dev, CONFIG_REGION, 0x00, b"\xff\xff\xff\xff")  # IDs are read-only
    assert config(dev, 0x00, 4) == 0x100315B3
    region_write(dev, CONFIG_REGION, 0x04, struct.pack("<H", 0xFFFF))
    assert config(dev, 0x04, 2) == 0x0547
    assert dev.pci.bus_master and dev.pci.intx_disabled
    region_write(dev, CONFIG_REGION, 0x04, struct.pack("<H", 0x0002))
    assert not dev.pci.bus_master
    region_write(dev, CONFIG_REGION, 0x0D, b"\x40")  # latency timer
    assert config(dev, 0x0D, 1) == 0x40
    region_write(dev, CONFIG_REGION, 0x9E, struct.pack("<H", 0xFFFF))  # MSI-X enable + mask
    assert config(dev, 0x9E, 2) == 0xC07F


@pytest.mark.parametrize("offset,size", [(0x3F, 1), (0x3E, 2), (0x3B, 4), (0xFC, 4)])
def test_config_any_offset_any_width(offset: int, size: int) -> None:
    dev = Cx3Device()
    assert len(region_read(dev, CONFIG_REGION, offset, size)) == size


def test_config_whole_header_in_one_read() -> None:
    """QEMU reads the 256-byte header in one request when it realizes the device."""
    dev = Cx3Device()
    header = region_read(dev, CONFIG_REGION, 0, 256)
    assert header[:4] == bytes.fromhex("b3150310")


@pytest.mark.parametrize("offset,size", [(0, 0), (0, 257), (0xFE, 4)])
def test_config_bad_access_is_refused(offset: int, size: int) -> None:
    dev = Cx3Device()
    with pytest.raises(AccessError):
        region_read(dev, CONFIG_REGION, offset, size)


def test_bar0_offers_all_but_the_trapped_pages() -> None:
    dev = Cx3Device()
    bar0 = dev.regions[BAR0_REGION]
    assert bar0.size == 1 << 20 and bar0.fd == dev.cr.fd
    covered = set()
    for off, size in bar0.mmap_areas:
        assert off % 4096 == 0 and size % 4096 == 0
        covered |= set(range(off, off + size, 4096))
    trapped = set(range(0, 1 << 20, 4096)) - covered
    assert trapped == {0x1F000, 0x80000, 0xF0000, 0xF3000}


def test_bar0_memfd_is_what_the_guest_maps() -> None:
    dev = Cx3Device()
    view = mmap.mmap(dev.cr.fd, layout.SIZE)
    image = bytes(range(256)) * (layout.SIZE // 256)
    dev.faults.load_crspace(image)
    assert view[0x40000:0x40100] == image[0x40000:0x40100]
    view[0x50000:0x50004] = b"\xde\xad\xbe\xef"  # a guest store through the mapping
    assert region_read(dev, BAR0_REGION, 0x50000, 4) == b"\xde\xad\xbe\xef"
    view.close()


def test_loaded_image_keeps_live_registers() -> None:
    dev = Cx3Device()
    dev.faults.set_health(b"\x77" * 64)
    dev.faults.load_crspace(b"\xee" * layout.SIZE)
    read = dev.read_bar0
    assert read(0x1F100, 64) == b"\x77" * 64  # health buffer: its own knob
    for reg in (0x1F000, 0x1F140, 0x80680, 0x80698, 0x8069C, 0x80700, 0xF0010, 0xF03FC):
        assert read(reg, 4) == b"\0\0\0\0", hex(reg)
    assert read(0xF3F04, 4) == b"\xee" * 4  # the CR filter comes from the image
    assert read(0x806A0, 4) == read(0x1F040, 4) == read(0, 4) == b"\xee" * 4
    with pytest.raises(ValueError, match="1048576 bytes"):
        dev.faults.load_crspace(b"short")


def test_bar0_reads_have_no_side_effects() -> None:
    dev = Cx3Device()
    before = dev.cr.image()
    for page in layout.TRAPPED_PAGES:
        for off in range(page, page + 4096, 4):
            region_read(dev, BAR0_REGION, off, 4)
    assert dev.cr.image() == before and dev.events.next_index == 0


def test_bar2_reads_zero_and_logs_unexpected_access() -> None:
    dev = Cx3Device()
    assert region_read(dev, BAR2_REGION, 0x101000, 8) == bytes(8)  # PBA
    assert dev.events.next_index == 0
    assert region_read(dev, BAR2_REGION, 0x80000, 4) == bytes(4)  # the kar page
    assert dev.events.since(0)[-1]["kind"] == "bar2_read"
    region_write(dev, BAR2_REGION, 0x1234, b"\1\2\3\4")
    assert dev.counts["errors"] == 1
