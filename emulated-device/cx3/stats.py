"""The port counters DUMP_ETH_STATS returns, in mlx4_en's layout (`en_port.h`:
struct mlx4_en_stat_out_mbox: 369 be64 counters, then 9 be32 ones).

What mlx4_en makes of them (`en_port.c: mlx4_en_DUMP_ETH_STATS`): on a function that is not
an SR-IOV master, the netdev's rx/tx packets and bytes are the driver's own ring counters; the
mailbox feeds ethtool's *_phy figures (sum of RTOT/ROCT/TTOT/TOCT over prio 0..7), rx_dropped
(RDROP), rx_fifo_errors (RdropOvflw), rx_length_errors (RdropLength), tx_dropped (TDROP),
multicast (MCAST), the broadcast counters and the per-priority ones. Frames are counted per
priority: a tagged frame under its PCP, an untagged one under prio 0 and also under "novlan".
Octet counters include the FCS the MAC appends.
"""

from __future__ import annotations

import collections
import struct

from . import frame

PRIOS = [f"prio_{i}" for i in range(8)] + ["novlan"]
TX_PRIOS = [*PRIOS, "loopbk"]
_R_SIZES = ["R64", "R127", "R255", "R511", "R1023", "R1518", "R1522", "R1548", "R2MTU"]
_T_SIZES = ["T" + name[1:] for name in _R_SIZES]
SIZE_LIMITS = [64, 127, 255, 511, 1023, 1518, 1522, 1548]  # then 2MTU, then GIANT


def _side(side: str, groups: list[str], prios: list[str], first_reserved: int) -> list[str]:
    """One direction's be64 counters: per-group, then octets, then totals (`en_port.h`)."""
    fields = [f"{group}_{p}" for group in groups for p in prios]
    for p in prios:
        fields += [f"{side}TTLOCT_{p}", f"{side}TTLOCT_NOFRM_{p}", f"{side}OCT_{p}"]
    for i, p in enumerate(prios):
        fields += [f"{side}TOT_{p}", f"{side}1Q_{p}", f"reserved{first_reserved + i}"]
    return fields


def _layout() -> tuple[list[str], list[str]]:
    u64 = _side("R", [*_R_SIZES, "RGIANT", "RBCAST", "MCAST", "RTOTG"], PRIOS, 1)
    u64 += ["RCNTL", "reserved10", "reserved11", "reserved12"]
    u64 += ["RInRangeLengthErr", "ROutRangeLengthErr", "RFrmTooLong", "PCS"]
    u64 += _side("T", [*_T_SIZES, "TGIANT", "TBCAST", "TMCAST", "TTOTG"], TX_PRIOS, 13)
    u32 = ["RJBBR", "RCRC", "RRUNT", "RSHORT", "RDROP", "RdropOvflw", "RdropLength"]
    u32 += ["RTOTFRMS", "TDROP"]
    return u64, u32


U64_FIELDS, U32_FIELDS = _layout()
assert len(U64_FIELDS) == 369 and len(U32_FIELDS) == 9
SIZE = 8 * len(U64_FIELDS) + 4 * len(U32_FIELDS)
_U64_OFFSETS = {name: 8 * i for i, name in enumerate(U64_FIELDS)}
_U32_OFFSETS = {name: 8 * len(U64_FIELDS) + 4 * i for i, name in enumerate(U32_FIELDS)}
OFFSETS = _U64_OFFSETS | _U32_OFFSETS
PREAMBLE = 8  # the "framing characters" of the TTLOCT counters


def _size_group(length: int) -> str:
    for limit, name in zip(SIZE_LIMITS, _R_SIZES, strict=False):
        if length <= limit:
            return name[1:]
    return "2MTU" if length <= 2 * 1500 else "GIANT"


class PortCounters:
    """One port's counters, by mailbox field name."""

    def __init__(self) -> None:
        self.values: collections.Counter[str] = collections.Counter()

    def _frame(self, side: str, data: bytes, octets_name: str, total_name: str) -> None:
        tci = frame.vlan_tci(data)
        prios = ["novlan"] if tci is None else [f"prio_{tci >> 13}"]
        length = len(data) + frame.FCS_LEN
        v = self.values
        for p in prios:
            v[f"{total_name}_{p}"] += 1
            v[f"{side}{_size_group(length)}_{p}"] += 1
            v[f"{side}TTLOCT_{p}"] += length + PREAMBLE
            v[f"{side}TTLOCT_NOFRM_{p}"] += length
            v[f"{octets_name}_{p}"] += length
            v[f"{side}TOTG_{p}"] += 1
            if tci is not None:
                v[f"{side}1Q_{p}"] += 1
            if frame.is_broadcast(data):
                v[f"{side}BCAST_{p}"] += 1
            elif frame.is_multicast(data):
                v[("MCAST" if side == "R" else "TMCAST") + f"_{p}"] += 1

    def transmitted(self, data: bytes) -> None:
        self._frame("T", data, "TOCT", "TTOT")

    def received(self, data: bytes) -> None:
        """A frame the port accepted (before any VLAN stripping)."""
        self._frame("R", data, "ROCT", "RTOT")
        self.values["RTOTFRMS"] += 1

    def count(self, name: str, n: int = 1) -> None:
        if name not in OFFSETS:
            raise KeyError(name)
        self.values[name] += n

    def __getitem__(self, name: str) -> int:
        return self.values[name]

    def total(self, group: str) -> int:
        """A group summed over prio 0..7 and novlan, as mlx4_en's en_stats_adder does."""
        return sum(self.values[f"{group}_{p}"] for p in PRIOS)

    def dump(self, reset: bool) -> bytes:
        out = bytearray(SIZE)
        for name, value in self.values.items():
            if name in _U64_OFFSETS:
                struct.pack_into(">Q", out, _U64_OFFSETS[name], value & (1 << 64) - 1)
            else:
                struct.pack_into(">I", out, _U32_OFFSETS[name], value & 0xFFFFFFFF)
        if reset:
            self.values.clear()
        return bytes(out)
