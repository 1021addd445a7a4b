"""Firmware command opcodes (`include/linux/mlx4/cmd.h`) this model knows by name."""

from __future__ import annotations

import enum


class Opcode(enum.IntEnum):
    QUERY_DEV_CAP = 0x003
    QUERY_FW = 0x004
    QUERY_ADAPTER = 0x006
    INIT_HCA = 0x007
    CLOSE_HCA = 0x008
    INIT_PORT = 0x009
    CLOSE_PORT = 0x00A
    QUERY_HCA = 0x00B
    SET_PORT = 0x00C
    HW2SW_MPT = 0x00F
    MAP_EQ = 0x012
    SW2HW_EQ = 0x013
    HW2SW_EQ = 0x014
    HW2SW_CQ = 0x017
    TO_RST_QP = 0x021  # "2RST_QP"
    CONF_SPECIAL_QP = 0x023
    MAD_IFC = 0x024
    SYNC_TPT = 0x02F
    NOP = 0x031
    MOD_STAT_CFG = 0x034
    HW2SW_SRQ = 0x036
    QUERY_PORT = 0x043
    SENSE_PORT = 0x04D
    RUN_FW = 0xFF6
    UNMAP_ICM = 0xFF9
    MAP_ICM = 0xFFA
    UNMAP_ICM_AUX = 0xFFB
    MAP_ICM_AUX = 0xFFC
    SET_ICM_SIZE = 0xFFD
    UNMAP_FA = 0xFFE
    MAP_FA = 0xFFF


#: A non-zero status on these sends the driver into its reset flow (cmd.c,
#: mlx4_closing_cmd_fatal_error).
CLOSING = frozenset(
    {
        Opcode.CLOSE_HCA,
        Opcode.HW2SW_EQ,
        Opcode.HW2SW_CQ,
        Opcode.TO_RST_QP,
        Opcode.HW2SW_SRQ,
        Opcode.SYNC_TPT,
        Opcode.UNMAP_ICM,
        Opcode.UNMAP_ICM_AUX,
        Opcode.UNMAP_FA,
        Opcode.HW2SW_MPT,
    }
)


def name(opcode: int) -> str:
    try:
        return Opcode(opcode).name
    except ValueError:
        return f"UNKNOWN_{opcode:#05x}"
