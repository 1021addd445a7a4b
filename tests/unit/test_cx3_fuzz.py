"""Garbage in, status out: no guest input may raise out of the model or leave the HCR busy."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cx3.hcr import Status
from cx3.opcodes import Opcode
from tests.unit.cx3_guest import HCR, make_device, region_write
from vfio_user.device import BAR0_REGION, BAR2_REGION

opcodes = st.one_of(st.sampled_from(list(Opcode)), st.integers(0, 0xFFF))
u32 = st.integers(0, 0xFFFFFFFF)


@st.composite
def commands(draw: st.DrawFn) -> tuple[int, int, int, int, bool, bytes, bool]:
    return (
        draw(opcodes),
        draw(st.integers(0, 15)),
        draw(u32),
        draw(st.integers(0, (1 << 64) - 1)),
        draw(st.booleans()),
        draw(st.binary(min_size=0, max_size=512)),
        draw(st.booleans()),  # point in_param/out_param at a real mailbox?
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(commands(), min_size=1, max_size=6))
def test_random_commands_complete_with_a_status(
    cmds: list[tuple[int, int, int, int, bool, bytes, bool]],
) -> None:
    dev, _, drv = make_device()
    drv.probe(comp_log_nent=6)
    for opcode, op_mod, in_mod, param, event, box, real in cmds:
        if real:
            param = drv.mailbox(box)
        if opcode == Opcode.SW2HW_EQ and real:
            in_mod %= 16
        drv.post(
            opcode,
            param,
            in_mod,
            op_mod,
            out_param=drv.mailbox(b"") if real else param,
            event=event,
        )
        status = drv.read32(HCR + 0x18)
        assert not status & 1 << 23, "GO left set"
        assert status >> 24 in set(Status), f"status {status >> 24:#x}"
    assert dev.counts["commands"] >= len(cmds)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([BAR0_REGION, BAR2_REGION]),
            st.integers(0, (2 << 20) - 1),
            st.binary(min_size=1, max_size=8),
        ),
        max_size=20,
    )
)
def test_random_register_writes_never_raise(writes: list[tuple[int, int, bytes]]) -> None:
    dev, _, drv = make_device()
    drv.probe(comp_log_nent=6)
    for region, offset, data in writes:
        size = dev.regions[region].size
        offset = min(offset, size - len(data))
        if region == BAR0_REGION:  # aim at the trapped pages, where the registers are
            offset = (0x1F000, 0x80000, 0xF0000, 0xF3000)[offset % 4] + offset % 4096
            offset = min(offset, size - len(data))
        region_write(dev, region, offset, data)
