"""The Ethernet port: link, MAC and VLAN tables, receive QP calculation, filters, counters.

One QUERY_PORT outbox serves both readers: mlx4_core reads the port capabilities (`fw.c:
mlx4_QUERY_PORT`: byte 0 bits 1:0 supported types, 0x02 MTU, 0x0a table sizes, 0x10 MAC) and
mlx4_en its own layout of the same bytes (`en_port.h: mlx4_en_query_port_context`: byte 0 bit 7
link up, 0x05 speed, 0x10 MAC). The link is up while the cable is (a knob of the model) and the
port is open (INIT_PORT until CLOSE_PORT).
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field

from . import caps, frame, stats
from .hcr import CommandFailed, Status
from .stats import PortCounters

TABLE_ENTRIES = 128  # MLX4_MAX_MAC_NUM, MLX4_MAX_VLAN_NUM: SET_PORT MAC/VLAN_TABLE inboxes
MAC_VALID = 1 << 63
MAC_MASK = (1 << 48) - 1
VLAN_VALID = 1 << 31
VLAN_MASK = 0xFFF
VLAN_FILTER_SIZE = 128 * 4  # struct mlx4_set_vlan_fltr_mbox
STATS_SIZE = stats.SIZE  # struct mlx4_en_stat_out_mbox
STATS_RESET = 1 << 8  # DUMP_ETH_STATS in_modifier: clear after reading

LINK_UP = 0x80  # QUERY_PORT byte 0, mlx4_en's view
GLOBAL_PAUSE = 0x80  # SET_PORT general pptx/pprx: 802.3x pause (`mlx4_SET_PORT_general`)
SUPPORTS_ETH = 0x02  # QUERY_PORT byte 0 bits 1:0, mlx4_core's view
SPEED_40G = 0x40  # MLX4_EN_40G_SPEED
ETH_OVERHEAD = 14 + 2 * 4 + 4  # MLX4_EN_EFF_MTU (header, two VLAN tags) + FCS


class SetPortEth(enum.IntEnum):
    """SET_PORT with op_modifier 1 (Ethernet): in_modifier bits 15:8."""

    GENERAL = 0
    RQP_CALC = 1
    MAC_TABLE = 2
    VLAN_TABLE = 3


class McastMode(enum.IntEnum):
    """SET_MCAST_FLTR op_modifier (`en_port.h`)."""

    CONFIG = 0
    DISABLE = 1
    ENABLE = 2


def mac_from_guid(guid: int) -> int:
    """A port's MAC from its 64-bit GUID: the OUI and the low 24 bits (EUI-64 minus fffe)."""
    return (guid >> 40) << 24 | (guid & 0xFFFFFF)


@dataclass
class Port:
    number: int
    mac: int
    log_max_macs: int = caps.LOG_MAX_MACS
    log_max_vlans: int = caps.LOG_MAX_VLANS
    open: bool = False
    mtu: int = 0
    pause: tuple[int, int, int, int] = (0, 0, 0, 0)  # pptx, pfctx, pprx, pfcrx
    macs: dict[int, int] = field(default_factory=dict)  # table index -> MAC
    vlans: dict[int, int] = field(default_factory=dict)  # table index -> VID
    base_qpn: int | None = None  # RQP_CALC: where unicast traffic lands
    promisc_qpn: int = 0  # RQP_CALC: where promiscuous (unmatched unicast) traffic lands
    mcast_qpn: int = 0  # RQP_CALC: where multicast and broadcast traffic lands
    n_mac: int = 0
    promisc: bool = False
    mc_promisc: int = 0
    mcast_filter_on: bool = False
    mcast_filter: set[int] = field(default_factory=set)
    vlan_filter: frozenset[int] = frozenset()
    stats_reads: int = 0
    counters: PortCounters = field(default_factory=PortCounters)

    def query(self, link_up: bool) -> bytes:
        out = bytearray(caps.OUTBOX_SIZE)
        out[0x00] = SUPPORTS_ETH | (LINK_UP if link_up and self.open else 0)
        struct.pack_into(">H", out, 0x02, caps.ETH_MTU)
        out[0x05] = SPEED_40G
        out[0x0A] = self.log_max_vlans << 4 | self.log_max_macs
        struct.pack_into(">Q", out, 0x10, self.mac)
        return bytes(out)

    # --- SET_PORT (Ethernet) --------------------------------------------------------------

    def set_general(self, raw: bytes) -> None:
        """`mlx4_SET_PORT_general` / `_fcs_check`: only the fields flagged valid change."""
        flags, mtu, pptx, pfctx, pprx, pfcrx = struct.unpack_from(">3xB2xHBB2xBB", raw, 0)
        if flags & 1:
            if not 0 < mtu <= caps.ETH_MTU + ETH_OVERHEAD:
                raise CommandFailed(
                    Status.BAD_PARAM,
                    f"port {self.number}: MTU {mtu} (max {caps.ETH_MTU + ETH_OVERHEAD})",
                )
            self.mtu = mtu
        if flags & 6:
            self.pause = (pptx, pfctx, pprx, pfcrx)

    def pauses(self, sender: Port, data: bytes) -> bool:
        """Whether this port, out of receive WQEs, holds back a frame `sender` sends it: it
        sends pause frames (pptx, global 802.3x pause) and the sender obeys them (pprx), or
        the same per priority (pfctx here, pfcrx there; an untagged frame is priority 0).
        mlx4_en asks for global pause on both by default (its rx_pause/tx_pause)."""
        pptx, pfctx, _, _ = self.pause
        _, _, pprx, pfcrx = sender.pause
        if pptx & pprx & GLOBAL_PAUSE:
            return True
        tci = frame.vlan_tci(data)
        priority = 0 if tci is None else tci >> 13
        return bool(pfctx & pfcrx & (1 << priority))

    def set_rqp_calc(self, raw: bytes, num_qps: int) -> None:
        base_qpn, n_mac = struct.unpack_from(">I xB", raw, 0)
        promisc, mcast = struct.unpack_from(">II", raw, 0x14)
        base_qpn &= 0xFFFFFF
        if base_qpn >= num_qps:
            raise CommandFailed(Status.BAD_PARAM, f"port {self.number}: base QP {base_qpn:#x}")
        self.base_qpn, self.n_mac = base_qpn, n_mac & 0xF
        self.promisc, self.mc_promisc = bool(promisc >> 31), mcast >> 30
        self.promisc_qpn, self.mcast_qpn = promisc & 0xFFFFFF, mcast & 0xFFFFFF

    def _table(
        self, what: str, raw: bytes, entry: str, valid: int, mask: int, log_max: int
    ) -> dict[int, int]:
        """A SET_PORT table: index -> value of the valid entries, all within the port's size."""
        entries = struct.unpack_from(f">{TABLE_ENTRIES}{entry}", raw, 0)
        table = {i: e & mask for i, e in enumerate(entries) if e & valid}
        over = [i for i in table if i >= 1 << log_max]
        if over:
            raise CommandFailed(
                Status.EXCEED_LIM,
                f"port {self.number}: {what} entries {over} beyond the {1 << log_max} it holds",
            )
        return table

    def set_mac_table(self, raw: bytes) -> None:
        table = self._table("MAC", raw, "Q", MAC_VALID, MAC_MASK, self.log_max_macs)
        if len(set(table.values())) != len(table):
            raise CommandFailed(Status.BAD_PARAM, f"port {self.number}: a MAC appears twice")
        self.macs = table

    def set_vlan_table(self, raw: bytes) -> None:
        self.vlans = self._table("VLAN", raw, "I", VLAN_VALID, VLAN_MASK, self.log_max_vlans)

    # --- filters -------------------------------------------------------------------------

    def set_mcast_filter(self, mode: int, param: int) -> None:
        """SET_MCAST_FLTR: in_param = clear << 63 | MAC (CONFIG), or a switch."""
        if mode == McastMode.CONFIG:
            if param >> 63:
                self.mcast_filter.clear()
            if param & MAC_MASK:
                self.mcast_filter.add(param & MAC_MASK)
        elif mode in (McastMode.DISABLE, McastMode.ENABLE):
            self.mcast_filter_on = mode == McastMode.ENABLE
        else:
            raise CommandFailed(Status.BAD_PARAM, f"SET_MCAST_FLTR mode {mode}")

    def set_vlan_filter(self, raw: bytes) -> None:
        """`mlx4_SET_VLAN_FLTR`: entry[127 - i] bit j admits VID 32 * i + j."""
        words = struct.unpack_from(">128I", raw, 0)
        self.vlan_filter = frozenset(
            32 * i + j for i in range(128) for j in range(32) if words[127 - i] >> j & 1
        )

    def steer(self, data: bytes) -> int | None:
        """The receive QP for a frame (A0 steering, the mode mlx4_core picks without the
        VEP/flow-steering capabilities), or None to drop it. Unicast to a MAC of the port's
        table goes to the RQP_CALC base QP (mlx4_en registers one MAC and points the base at
        its RSS/ring QP; the model does not add the MAC's table index), unknown unicast only
        in promiscuous mode; multicast passes the SET_MCAST_FLTR filter when it is on;
        a VLAN-tagged frame needs its VID in the SET_VLAN_FLTR filter (promiscuous aside)."""
        if self.base_qpn is None:
            return None
        tci = frame.vlan_tci(data)
        if tci is not None and tci & VLAN_MASK not in self.vlan_filter and not self.promisc:
            return None
        dst = frame.dst_mac(data)
        if frame.is_multicast(data):
            if self.promisc or not self.mcast_filter_on or dst in self.mcast_filter:
                return self.mcast_qpn or self.base_qpn
            return None
        if dst in self.macs.values():
            return self.base_qpn
        return (self.promisc_qpn or self.base_qpn) if self.promisc else None

    def dump_stats(self, reset: bool) -> bytes:
        """DUMP_ETH_STATS: the port's counters (`stats.py`), cleared after reading on request."""
        self.stats_reads += 1
        return self.counters.dump(reset)

    def describe(self, link_up: bool) -> dict[str, object]:
        return {
            "open": self.open,
            "link_up": link_up and self.open,
            "mac": f"{self.mac:012x}",
            "mtu": self.mtu,
            "macs": {str(i): f"{m:012x}" for i, m in sorted(self.macs.items())},
            "vlans": {str(i): v for i, v in sorted(self.vlans.items())},
            "base_qpn": self.base_qpn,
            "promisc": self.promisc,
            "mcast_filter": [f"{m:012x}" for m in sorted(self.mcast_filter)]
            if self.mcast_filter_on
            else None,
            "vlan_filter": sorted(self.vlan_filter),
            "counters": {k: v for k, v in sorted(self.counters.values.items()) if v},
        }
