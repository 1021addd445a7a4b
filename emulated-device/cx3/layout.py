"""BAR0 ("CR-space") layout and its live registers: pure data, shared by the model and the rig.

The model (crspace.py, device.py) serves these registers; the rig uses the same table to say
why a crdump snapshot may differ from the image loaded into the device. Imports nothing.

File names below are in the kernel's drivers/net/ethernet/mellanox/mlx4/.
"""

from __future__ import annotations

from dataclasses import dataclass

SIZE = 1 << 20  # mlx4_crdump_collect_crspace() dumps all of BAR0 (crdump.c)
PAGE = 4096

# Offsets the driver hard-codes, and the ones our firmware advertises.
CATAS_OFFSET = 0x1F000  # QUERY_FW catas_offset: internal-error buffer (fw.c, catas.c)
CATAS_DWORDS = 0x10  # QUERY_FW catas_size
HEALTH_OFFSET = 0x1F100  # QUERY_DEV_CAP 0xe4 health_buffer_addrs (fw.c)
HEALTH_SIZE = 0x40  # HEALTH_BUFFER_SIZE (crdump.c)
BLOCK_VOLATILE = HEALTH_OFFSET + HEALTH_SIZE  # crdump writes 1 before, 0 after the dump
HCR_OFFSET = 0x80680  # MLX4_HCR_BASE (mlx4.h)
HCR_SIZE = 0x1C  # MLX4_HCR_SIZE (mlx4.h)
OWNERSHIP = 0x8069C  # MLX4_OWNER_BASE (main.c)
CLR_INT_OFFSET = 0x80700  # QUERY_FW clr_int_base, 8 bytes; inta_pin 0 writes +4
RESET = 0xF0010  # MLX4_RESET_BASE + MLX4_RESET_OFFSET (reset.c)
HW_DEV_ID = 0xF0014  # the chip's id, low 16 bits; mstflint names the chip by it (mtcr_ul)
CONNECTX3_HW_DEV_ID = 0x1F5  # the model's whole word (hw_rev, bits 23:16, 0); a CX-3 Pro: 0x1f7
FLUSH = 0xF0380  # mstflint's "ConnectX flush": it writes 0, then reads until 0 (mtcr_ul)
SEMAPHORE = 0xF03FC  # MLX4_RESET_BASE + MLX4_SEM_OFFSET (reset.c)
CR_FILTER = 0xF3F04  # CR_ENABLE_BIT_OFFSET, bit 6 (crdump.c); content comes from the image

#: What a catas fault writes unless told otherwise: the NVIDIA reset-flow documentation's buf[00].
DEFAULT_CATAS = (0x0FFFFFFF,)


@dataclass(frozen=True)
class Register:
    offset: int
    size: int
    name: str
    why: str  # why its content in a snapshot need not be the loaded image's
    owned: bool = True  # the model's: loading an image never overrides it

    def covers(self, offset: int) -> bool:
        return self.offset <= offset < self.offset + self.size


#: Every BAR0 range whose content is not simply the loaded image's.
REGISTERS = (
    Register(
        CATAS_OFFSET,
        CATAS_DWORDS * 4,
        "catas buffer",
        "internal-error words the fault injected (live firmware state)",
    ),
    Register(
        HEALTH_OFFSET,
        HEALTH_SIZE,
        "health buffer",
        "the firmware health buffer (loaded separately, --health)",
    ),
    Register(
        BLOCK_VOLATILE,
        4,
        "block-volatile word",
        "crdump writes 1 here just before it reads BAR0",
    ),
    Register(HCR_OFFSET, HCR_SIZE, "HCR", "the command register holds the last command"),
    Register(OWNERSHIP, 4, "ownership", "live register: reads 0"),
    Register(CLR_INT_OFFSET, 8, "clr_int", "live register: interrupt clear"),
    Register(RESET, 4, "reset", "live register: reads 0"),
    Register(HW_DEV_ID, 4, "hw_dev_id", "the chip's id: a ConnectX-3's, whatever the image held"),
    Register(FLUSH, 4, "ConnectX flush", "live register: reads 0 (mstflint's flush)"),
    Register(SEMAPHORE, 4, "HW semaphore", "live register: reads 0"),
    Register(CR_FILTER, 4, "CR filter", "crdump clears bit 6 before the dump", owned=False),
)


#: The pages BAR0 accesses to which the model sees (traps); the rest the guest maps directly.
TRAPPED_PAGES = tuple(sorted({reg.offset - reg.offset % PAGE for reg in REGISTERS}))


def register_at(offset: int) -> Register | None:
    for reg in REGISTERS:
        if reg.covers(offset):
            return reg
    return None
