"""mstflint's two ways into CR-space on a 15b3:1003 (its mtcr_ul), against the model's process
over the vfio-user wire: the mapped BAR0 (hw_dev_id, then the "ConnectX flush" it writes and
polls) and the config-space gateway (address dword 0x58, data dword 0x5c)."""

from __future__ import annotations

import os
import struct

from cx3 import layout
from cx3.client import ControlClient
from tests.unit.model_proc import Model
from vfio_user import CONFIG_REGION
from vfio_user.client import Client
from vfio_user.device import BAR0_REGION
from vfio_user.protocol import REGION_RW, Command, Flags

ADDRESS, DATA = 0x58, 0x5C


def gateway_read(client: Client, address: int) -> int:
    """mtcr_pciconf_mread4_old: the address, then the data, both little-endian."""
    client.write32(CONFIG_REGION, ADDRESS, address)
    return client.read32(CONFIG_REGION, DATA)


def test_hw_dev_id_names_a_connectx3_whatever_the_image(model: Model) -> None:
    with Client(model.socket) as client, ControlClient(model.control) as control:
        client.version()
        # A trapped page: the read crosses the wire, big-endian as mtcr_pcicr_mread4 takes it.
        assert client.read(BAR0_REGION, 0xF0014, 4) == b"\x00\x00\x01\xf5"
        control.load_crspace(os.urandom(layout.SIZE))
        assert client.read(BAR0_REGION, 0xF0014, 4) == b"\x00\x00\x01\xf5"
        client.write(BAR0_REGION, 0xF0014, b"\x00\x00\x01\xf7")  # read-only
        assert control.read_bar0(0xF0014, 4) == b"\x00\x00\x01\xf5"


def test_the_connectx_flush_completes_and_leaves_cr_space_as_it_was(model: Model) -> None:
    image = bytearray(os.urandom(layout.SIZE))
    with Client(model.socket) as client, ControlClient(model.control) as control:
        client.version()
        control.load_crspace(bytes(image))
        since = control.events().next
        # mtcr_connectx_flush: write 0, read until 0 (one read here: it must already be 0).
        client.write(BAR0_REGION, 0xF0380, b"\0\0\0\0")
        assert client.read(BAR0_REGION, 0xF0380, 4) == b"\0\0\0\0"
        assert [e["kind"] for e in control.events(since).events] == ["flush"]
        after = control.read_bar0(0, layout.SIZE)
        for reg in layout.REGISTERS:  # only the model's registers differ from the image
            if reg.owned:
                end = reg.offset + reg.size
                image[reg.offset : end] = after[reg.offset : end]
        assert after == bytes(image)


def test_the_config_gateway_reads_and_writes_cr_space(model: Model) -> None:
    image = bytearray(os.urandom(layout.SIZE))
    image[0x40000:0x40004] = bytes.fromhex("12345678")
    with Client(model.socket) as client, ControlClient(model.control) as control:
        client.version()
        control.load_crspace(bytes(image))
        # is_wo_pciconf_gw: the address reads back (not 0xbadacce5), so mstflint uses it as is.
        client.write32(CONFIG_REGION, ADDRESS, 0xF0014)
        assert client.read32(CONFIG_REGION, ADDRESS) == 0xF0014
        assert client.read32(CONFIG_REGION, DATA) == 0x1F5
        assert gateway_read(client, 0x40000) == 0x12345678
        assert gateway_read(client, 0x1F000) == 0  # a live register as the mapping shows it
        # mtcr_pciconf_mwrite4_old: address, then data; it lands in BAR0 big-endian.
        client.write32(CONFIG_REGION, ADDRESS, 0x40004)
        client.write32(CONFIG_REGION, DATA, 0xCAFEF00D)
        assert control.read_bar0(0x40004, 4) == bytes.fromhex("cafef00d")
        # Writes reach the registers' hooks too: the flush, as through the BAR.
        since = control.events().next
        client.write32(CONFIG_REGION, ADDRESS, 0xF0380)
        client.write32(CONFIG_REGION, DATA, 0)
        assert [e["kind"] for e in control.events(since).events] == ["flush"]
        # No CR-space there: the card's "bad access" word; a write there is dropped.
        assert gateway_read(client, layout.SIZE) == 0xBADACCE5
        assert gateway_read(client, 0x40002) == 0xBADACCE5
        before = control.read_bar0(0, layout.SIZE)
        client.write32(CONFIG_REGION, DATA, 0xFFFFFFFF)
        assert control.read_bar0(0, layout.SIZE) == before
        # The rest of config space is untouched by the gateway.
        header = client.read(CONFIG_REGION, 0, 256)
        assert struct.unpack_from("<HH", header, 0) == (0x15B3, 0x1003)
        assert struct.unpack_from("<I", header, DATA)[0] == 0xBADACCE5  # address still 0x40002
        # Each data read counted (the header read above covers the data dword too), so a test
        # can tell which way mstflint came in; a BAR0 read does not count.
        client.read(BAR0_REGION, 0xF0014, 4)
        assert control.state()["counts"]["gateway_reads"] == 6


def test_a_posted_address_write_is_seen_by_the_next_data_read(model: Model) -> None:
    """QEMU with x-posted-config-dword=0x58 (the rig's patch) sends the address write with
    NO_REPLY and does not wait: the model must take it, answer nothing, and serve the data
    read that follows on the same socket from the new address."""
    image = bytearray(layout.SIZE)
    for address in (0x40000, 0x40004, 0x7FFFC):
        image[address : address + 4] = address.to_bytes(4, "big")
    with Client(model.socket) as client, ControlClient(model.control) as control:
        client.version()
        control.load_crspace(bytes(image))
        for address in (0x40000, 0x7FFFC, 0x40004):
            payload = REGION_RW.pack(ADDRESS, CONFIG_REGION, 4) + struct.pack("<I", address)
            assert client.request(Command.REGION_WRITE, payload, flags=Flags.NO_REPLY) == (b"", [])
            assert client.read32(CONFIG_REGION, DATA) == address  # the reply to the read
