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
    SW2HW_MPT = 0x00D
    QUERY_MPT = 0x00E
    HW2SW_MPT = 0x00F
    MAP_EQ = 0x012
    SW2HW_EQ = 0x013
    HW2SW_EQ = 0x014
    SW2HW_CQ = 0x016
    HW2SW_CQ = 0x017
    QUERY_CQ = 0x018
    RST2INIT_QP = 0x019
    INIT2RTR_QP = 0x01A
    RTR2RTS_QP = 0x01B
    RTS2RTS_QP = 0x01C
    SQERR2RTS_QP = 0x01D
    TO_ERR_QP = 0x01E  # "2ERR_QP"
    RTS2SQD_QP = 0x01F
    SQD2RTS_QP = 0x020
    TO_RST_QP = 0x021  # "2RST_QP"
    QUERY_QP = 0x022
    CONF_SPECIAL_QP = 0x023
    MAD_IFC = 0x024
    READ_MCG = 0x025
    WRITE_MCG = 0x026
    MGID_HASH = 0x027
    MODIFY_CQ = 0x02C
    INIT2INIT_QP = 0x02D
    SYNC_TPT = 0x02F
    NOP = 0x031
    MOD_STAT_CFG = 0x034
    HW2SW_SRQ = 0x036
    SQD2SQD_QP = 0x038
    QUERY_PORT = 0x043
    SET_VLAN_FLTR = 0x047
    SET_MCAST_FLTR = 0x048
    DUMP_ETH_STATS = 0x049
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
