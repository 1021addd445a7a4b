"""The emulated firmware: opcode dispatch and the commands mlx4_core sends (fw.c,
main.c, eq.c, icm.c).

Commands run synchronously. Every failure becomes a status with a message, never an exception:
unknown opcodes answer BAD_OP, unreachable guest memory BAD_PARAM, unmapped ICM ICM_ERROR.
Commands that only need to succeed (the driver reads a zeroed mailbox as "nothing to report")
do no DMA at all.
"""

from __future__ import annotations

from collections.abc import Callable, Container
from dataclasses import dataclass, field, replace

from vfio_user import DmaError

from . import caps, cq, eq, hca, mcg, mpt, qp
from . import port as port_module
from .cable import Cable
from .cq import CompletionQueue, CqContext
from .dma import GuestMemory
from .eq import EqContext, EqError, EventQueue
from .hca import HcaParams
from .hcr import Command, CommandFailed, Status
from .icm import MAP_ENTRY_SIZE, MAX_MAP_ENTRIES, PAGE, IcmError, IcmMap
from .mcg import McgTable
from .mpt import Mpt
from .opcodes import Opcode
from .port import Port, SetPortEth
from .qp import QpContext, QpState, QueuePair

__all__ = ["CommandFailed", "Firmware", "FwState", "Result"]

MAX_EQS = 1024  # MLX4_MAX_EQ_NUM
NUM_PORTS = 2  # cabled to each other (cable.py)
MAP_EQ_UNMAP = 1 << 31
SET_PORT_ETH = 1  # SET_PORT op_modifier: the Ethernet layouts (0 is InfiniBand's)

Event = tuple[int, bytes]  # (event type, EQE) for the EQ that type is mapped to


@dataclass(frozen=True)
class Result:
    status: int = Status.OK
    out_imm: int | None = None  # immediate output, written to HCR out_param / the EQE
    error: str | None = None  # why the status is not OK, for the event log
    events: tuple[Event, ...] = ()  # asynchronous events the command caused, posted after it


Handler = Callable[[Command], Result | None]


@dataclass
class FwState:
    """Everything the driver set up; a reset replaces it whole."""

    ports: dict[int, Port]
    running: bool = False
    hca: HcaParams | None = None
    icm_size: int = 0
    icm: IcmMap = field(default_factory=IcmMap)
    eqs: dict[int, EventQueue] = field(default_factory=dict)
    event_map: dict[int, int] = field(default_factory=dict)  # event type -> eqn (MAP_EQ)
    mpts: dict[int, Mpt] = field(default_factory=dict)  # dMPT index -> hardware-owned entry
    cqs: dict[int, CompletionQueue] = field(default_factory=dict)
    qps: dict[int, QueuePair] = field(default_factory=dict)  # QPs out of RST
    mcg: McgTable | None = None

    @property
    def hca_initialized(self) -> bool:
        return self.hca is not None

    @property
    def mtt_base(self) -> int:
        return 0 if self.hca is None else self.hca.mtt_base


class Firmware:
    def __init__(self, mem: GuestMemory, mac: int = caps.MAC) -> None:
        self.mem = mem
        self.mac = mac  # port 1's; port n has mac + n - 1
        self.state = self._power_on()
        # Knobs, not firmware state: they survive resets. The health buffer shows at the next
        # QUERY_DEV_CAP; the cable decides whether an open port has link.
        self.health_buffer = True
        self.cable = Cable()
        accept = self._accept
        modify_qp = self._modify_qp
        self._handlers: dict[int, Handler] = {
            Opcode.QUERY_FW: self._query_fw,
            Opcode.RUN_FW: self._run_fw,
            Opcode.QUERY_DEV_CAP: self._query_dev_cap,
            Opcode.QUERY_PORT: self._query_port,
            Opcode.SET_ICM_SIZE: self._set_icm_size,
            Opcode.MAP_ICM: self._map_icm,
            Opcode.UNMAP_ICM: self._unmap_icm,
            Opcode.INIT_HCA: self._init_hca,
            Opcode.QUERY_HCA: self._query_hca,
            Opcode.CLOSE_HCA: self._close_hca,
            Opcode.SW2HW_EQ: self._sw2hw_eq,
            Opcode.HW2SW_EQ: self._hw2sw_eq,
            Opcode.MAP_EQ: self._map_eq,
            Opcode.UNMAP_FA: self._unmap_fa,
            Opcode.SENSE_PORT: self._sense_port,
            Opcode.INIT_PORT: self._init_port,
            Opcode.CLOSE_PORT: self._close_port,
            Opcode.SET_PORT: self._set_port,
            Opcode.SET_MCAST_FLTR: self._set_mcast_fltr,
            Opcode.SET_VLAN_FLTR: self._set_vlan_fltr,
            Opcode.DUMP_ETH_STATS: self._dump_eth_stats,
            Opcode.SW2HW_MPT: self._sw2hw_mpt,
            Opcode.HW2SW_MPT: self._hw2sw_mpt,
            Opcode.SW2HW_CQ: self._sw2hw_cq,
            Opcode.MODIFY_CQ: self._modify_cq,
            Opcode.HW2SW_CQ: self._hw2sw_cq,
            Opcode.RST2INIT_QP: modify_qp,
            Opcode.INIT2INIT_QP: modify_qp,
            Opcode.INIT2RTR_QP: modify_qp,
            Opcode.RTR2RTS_QP: modify_qp,
            Opcode.RTS2RTS_QP: modify_qp,
            Opcode.SQERR2RTS_QP: modify_qp,
            Opcode.RTS2SQD_QP: modify_qp,
            Opcode.SQD2SQD_QP: modify_qp,
            Opcode.SQD2RTS_QP: modify_qp,
            Opcode.TO_ERR_QP: modify_qp,
            Opcode.TO_RST_QP: modify_qp,
            Opcode.QUERY_QP: self._query_qp,
            Opcode.MGID_HASH: self._mgid_hash,
            Opcode.READ_MCG: self._read_mcg,
            Opcode.WRITE_MCG: self._write_mcg,
            # Success with nothing to do: the FW needs no private memory (FA, ICM_AUX pages are
            # ignored), zero outboxes are valid answers, and closing commands must not fail.
            Opcode.MAP_FA: accept,
            Opcode.MAP_ICM_AUX: accept,
            Opcode.UNMAP_ICM_AUX: accept,
            Opcode.MOD_STAT_CFG: accept,
            Opcode.QUERY_ADAPTER: accept,
            Opcode.NOP: accept,
            Opcode.CONF_SPECIAL_QP: accept,
            Opcode.MAD_IFC: accept,
            Opcode.SYNC_TPT: accept,
            Opcode.HW2SW_SRQ: accept,
        }

    def _power_on(self) -> FwState:
        return FwState(ports={n: Port(n, self.mac + n - 1) for n in range(1, NUM_PORTS + 1)})

    def reset(self) -> None:
        """Forget everything the driver set up, in particular every DMA target."""
        self.state = self._power_on()

    def execute(self, cmd: Command) -> Result:
        handler = self._handlers.get(cmd.opcode)
        if handler is None:
            return Result(Status.BAD_OP, error=f"unknown opcode {cmd.opcode:#05x}")
        try:
            return handler(cmd) or Result()
        except CommandFailed as e:
            return Result(e.status, error=str(e))
        except (DmaError, EqError) as e:
            return Result(Status.BAD_PARAM, error=str(e))
        except IcmError as e:
            return Result(Status.ICM_ERROR, error=str(e))

    def post_event(self, event_type: int, eqe: bytes) -> EventQueue | None:
        """Post an EQE to the EQ this type is mapped to; returns the EQ if it must interrupt."""
        eqn = self.state.event_map.get(event_type)
        queue = None if eqn is None else self.state.eqs.get(eqn)
        if queue is None:
            raise EqError(f"event type {event_type:#04x} has no EQ (mapped to {eqn})")
        return queue if queue.post(self.mem, eqe) else None

    def link_up(self, number: int) -> bool:
        port = self.state.ports[number]
        return port.open and self.cable.plugged

    def set_cable(self, up: bool) -> tuple[Event, ...]:
        """Plug or pull the cable between the ports; returns the PORT_CHANGE events (one per
        port whose link changed)."""
        before = {n: self.link_up(n) for n in self.state.ports}
        self.cable.plugged = up
        return tuple(e for n in self.state.ports for e in self._link_events(n, before[n]))

    def _link_events(self, number: int, before: bool) -> tuple[Event, ...]:
        now = self.link_up(number)
        if now == before:
            return ()
        return ((eq.EVENT_PORT_CHANGE, eq.port_change_eqe(number, now)),)

    def describe(self) -> dict[str, object]:
        state = self.state
        hca_params = state.hca
        return {
            "fw_running": state.running,
            "health_buffer": self.health_buffer,
            "hca_initialized": state.hca_initialized,
            "icm_pages": len(state.icm),
            "mtt_base": state.mtt_base,
            "eqe_size": eq.EQE_SIZE if hca_params is None else hca_params.eqe_size,
            "event_map": {str(t): n for t, n in sorted(state.event_map.items())},
            "eqs": [
                {
                    "eqn": q.eqn,
                    "nent": q.nent,
                    "intr": q.intr,
                    "producer": q.producer,
                    "consumer": q.consumer,
                    "armed": q.armed,
                }
                for q in sorted(state.eqs.values(), key=lambda q: q.eqn)
            ],
            "mpts": sorted(state.mpts),
            "cqs": [state.cqs[n].describe() for n in sorted(state.cqs)],
            "qps": [state.qps[n].describe() for n in sorted(state.qps)],
            "cable": self.cable.plugged,
            "ports": {str(n): p.describe(self.cable.plugged) for n, p in state.ports.items()},
        }

    # --- commands --------------------------------------------------------------------------

    def _accept(self, cmd: Command) -> None:
        pass

    def _query_fw(self, cmd: Command) -> None:
        self.mem.write(cmd.out_param, caps.query_fw())

    def _run_fw(self, cmd: Command) -> None:
        self.state.running = True

    def _unmap_fa(self, cmd: Command) -> None:
        self.state.running = False

    def _query_dev_cap(self, cmd: Command) -> None:
        self.mem.write(cmd.out_param, caps.query_dev_cap(self.health_buffer))

    def _sense_port(self, cmd: Command) -> Result:
        return Result(out_imm=0)  # "port type unknown", within the driver's limit of 2

    def _set_icm_size(self, cmd: Command) -> Result:
        self.state.icm_size = cmd.in_param
        return Result(out_imm=0)  # no aux pages: MAP_ICM_AUX is never sent

    def _map_icm(self, cmd: Command) -> None:
        count = cmd.in_modifier
        if not 1 <= count <= MAX_MAP_ENTRIES:
            raise CommandFailed(Status.BAD_PARAM, f"MAP_ICM with {count} entries")
        self.state.icm.map_entries(self.mem.read(cmd.in_param, count * MAP_ENTRY_SIZE))

    def _unmap_icm(self, cmd: Command) -> None:
        self.state.icm.unmap(cmd.in_param, cmd.in_modifier)

    def _new_context(self, table: hca.Table, number: int, owned: Container[int]) -> None:
        """SW2HW_*: a number in the table, its context in ICM, not hardware-owned already."""
        hca.check_context(self.state.icm, table, number)
        if number in owned:
            raise CommandFailed(
                Status.BAD_RES_STATE, f"{table.name} {number:#x} is already hardware-owned"
            )

    def _require_hca(self, what: str) -> HcaParams:
        if self.state.hca is None:
            raise CommandFailed(Status.BAD_SYS_STATE, f"{what} before INIT_HCA")
        return self.state.hca

    def _init_hca(self, cmd: Command) -> None:
        self.state.hca = params = HcaParams.decode(self.mem.read(cmd.in_param, hca.INIT_HCA_SIZE))
        self.state.mcg = McgTable(
            params.log_mc_entry_size, params.log_mc_hash_size, params.log_mc_table_size
        )

    def _query_hca(self, cmd: Command) -> None:
        """The parameters INIT_HCA set, as `fw.c: mlx4_QUERY_HCA` reads them back."""
        self.mem.write(cmd.out_param, self._require_hca("QUERY_HCA").raw)

    def _close_hca(self, cmd: Command) -> None:
        self.state.hca = None

    def _sw2hw_eq(self, cmd: Command) -> None:
        eqn = cmd.in_modifier
        if eqn >= MAX_EQS:
            raise CommandFailed(Status.BAD_PARAM, f"SW2HW_EQ of EQ {eqn}")
        params = self._require_hca("SW2HW_EQ")
        if eqn in self.state.eqs:
            raise CommandFailed(Status.BAD_RES_STATE, f"EQ {eqn} already exists")
        ctx = EqContext.decode(self.mem.read(cmd.in_param, eq.CONTEXT_SIZE))
        page_size = PAGE << ctx.log_page_size
        buffer = (1 << ctx.log_nent) * params.eqe_size
        if buffer > eq.MAX_BUFFER or page_size > eq.MAX_BUFFER or ctx.page_offset:
            raise CommandFailed(
                Status.BAD_PARAM,
                f"EQ {eqn}: {1 << ctx.log_nent} entries, page size {page_size}, "
                f"page offset {ctx.page_offset} not supported",
            )
        queue = EventQueue(
            eqn=eqn,
            log_nent=ctx.log_nent,
            eqe_size=params.eqe_size,
            eqe_offset=params.eqe_offset,
            page_size=page_size,
            pages=[],
            intr=ctx.intr,
            producer=ctx.producer,
            consumer=ctx.consumer,
            armed=ctx.state == eq.STATE_ARMED,
            always_armed=ctx.state == eq.STATE_ALWAYS_ARMED,
        )
        queue.pages = self.state.icm.mtt_pages(
            self.mem, params.mtt_base + ctx.mtt_offset, queue.buffer_pages()
        )
        queue.fill_hw_owned(self.mem)  # a zeroed ring would look full of valid events
        self.state.eqs[eqn] = queue

    def _hw2sw_eq(self, cmd: Command) -> None:
        self.state.eqs.pop(cmd.in_modifier, None)  # closing command: an unknown EQ is no failure

    def _map_eq(self, cmd: Command) -> None:
        eqn = cmd.in_modifier & ~MAP_EQ_UNMAP
        types = [t for t in range(64) if cmd.in_param >> t & 1]
        if cmd.in_modifier & MAP_EQ_UNMAP:
            for t in types:
                if self.state.event_map.get(t) == eqn:
                    del self.state.event_map[t]
        else:
            for t in types:
                self.state.event_map[t] = eqn

    # --- the port (mlx4_en) ----------------------------------------------------------------

    def _port(self, number: int, what: str) -> Port:
        port = self.state.ports.get(number)
        if port is None:
            raise CommandFailed(Status.BAD_PARAM, f"{what} of port {number}")
        return port

    def _query_port(self, cmd: Command) -> None:
        port = self._port(cmd.in_modifier, "QUERY_PORT")
        self.mem.write(cmd.out_param, port.query(self.cable.plugged))

    def _init_port(self, cmd: Command) -> Result:
        """Open the port: with the cable in, the link comes up and says so (PORT_CHANGE)."""
        self._require_hca("INIT_PORT")
        port = self._port(cmd.in_modifier, "INIT_PORT")
        before = self.link_up(port.number)
        port.open = True  # again while open is fine: mlx4_en opens it at load and at ifup
        return Result(events=self._link_events(port.number, before))

    def _close_port(self, cmd: Command) -> Result:
        port = self._port(cmd.in_modifier, "CLOSE_PORT")
        before = self.link_up(port.number)
        port.open = False
        return Result(events=self._link_events(port.number, before))

    def _set_port(self, cmd: Command) -> None:
        """SET_PORT: op_modifier 1 and in_modifier[15:8] select the Ethernet layout."""
        params = self._require_hca("SET_PORT")
        port = self._port(cmd.in_modifier & 0xFF, "SET_PORT")
        if cmd.op_modifier != SET_PORT_ETH:
            raise CommandFailed(
                Status.BAD_PARAM, f"SET_PORT op_modifier {cmd.op_modifier} on an Ethernet port"
            )
        which = (cmd.in_modifier >> 8) & 0xFF
        if which == SetPortEth.GENERAL:
            port.set_general(self.mem.read(cmd.in_param, 0x20))
        elif which == SetPortEth.RQP_CALC:
            port.set_rqp_calc(self.mem.read(cmd.in_param, 0x20), 1 << params.log_num_qps)
        elif which == SetPortEth.MAC_TABLE:
            port.set_mac_table(self.mem.read(cmd.in_param, 8 * port_module.TABLE_ENTRIES))
        elif which == SetPortEth.VLAN_TABLE:
            port.set_vlan_table(self.mem.read(cmd.in_param, 4 * port_module.TABLE_ENTRIES))
        else:
            raise CommandFailed(Status.BAD_PARAM, f"SET_PORT Ethernet table {which:#x}")

    def _set_mcast_fltr(self, cmd: Command) -> None:
        port = self._port(cmd.in_modifier & 0xFF, "SET_MCAST_FLTR")
        port.set_mcast_filter(cmd.op_modifier, cmd.in_param)

    def _set_vlan_fltr(self, cmd: Command) -> None:
        port = self._port(cmd.in_modifier & 0xFF, "SET_VLAN_FLTR")
        port.set_vlan_filter(self.mem.read(cmd.in_param, port_module.VLAN_FILTER_SIZE))

    def _dump_eth_stats(self, cmd: Command) -> None:
        port = self._port(cmd.in_modifier & 0xFF, "DUMP_ETH_STATS")
        reset = bool(cmd.in_modifier & port_module.STATS_RESET)
        self.mem.write(cmd.out_param, port.dump_stats(reset))

    # --- memory regions --------------------------------------------------------------------

    def _sw2hw_mpt(self, cmd: Command) -> None:
        params = self._require_hca("SW2HW_MPT")
        index = cmd.in_modifier
        self._new_context(params.mpt_table, index, self.state.mpts)
        entry = Mpt.decode(index, self.mem.read(cmd.in_param, mpt.ENTRY_SIZE))
        if entry.key & ((1 << params.log_num_mpts) - 1) != index:
            raise CommandFailed(
                Status.BAD_PARAM, f"MPT {index:#x}: key {entry.key:#x} names another entry"
            )
        self.state.mpts[index] = entry

    def _hw2sw_mpt(self, cmd: Command) -> None:
        self.state.mpts.pop(cmd.in_modifier, None)  # closing command: unknown is no failure

    # --- completion queues -----------------------------------------------------------------

    def _cq_pages(self, params: HcaParams, cqn: int, ctx: CqContext) -> CompletionQueue:
        queue = CompletionQueue(cqn, ctx, params.cqe_size, producer=ctx.producer)
        buffer = queue.nent * queue.cqe_size
        if buffer > eq.MAX_BUFFER or queue.page_size > eq.MAX_BUFFER or ctx.page_offset:
            raise CommandFailed(
                Status.BAD_PARAM,
                f"CQ {cqn:#x}: {queue.nent} entries, page size {queue.page_size}, "
                f"page offset {ctx.page_offset} not supported",
            )
        queue.pages = self.state.icm.mtt_pages(
            self.mem, params.mtt_base + ctx.mtt_offset, queue.buffer_pages()
        )
        return queue

    def _sw2hw_cq(self, cmd: Command) -> None:
        params = self._require_hca("SW2HW_CQ")
        cqn = cmd.in_modifier
        self._new_context(params.cq_table, cqn, self.state.cqs)
        ctx = CqContext.decode(self.mem.read(cmd.in_param, cq.CONTEXT_SIZE))
        if ctx.comp_eqn not in self.state.eqs:
            raise CommandFailed(Status.BAD_PARAM, f"CQ {cqn:#x}: no EQ {ctx.comp_eqn}")
        queue = self._cq_pages(params, cqn, ctx)
        if cmd.op_modifier == 0:  # the driver did not initialise the CQEs: hand them over
            self.mem.fill(queue.pages, queue.page_size, queue.nent * queue.cqe_size, eq.HW_FILL)
        self.state.cqs[cqn] = queue

    def _modify_cq(self, cmd: Command) -> None:
        params = self._require_hca("MODIFY_CQ")
        cqn = cmd.in_modifier
        hca.check_index(params.cq_table, cqn)
        queue = self.state.cqs.get(cqn)
        if queue is None:
            raise CommandFailed(Status.BAD_RES_STATE, f"CQ {cqn:#x} is not hardware-owned")
        ctx = CqContext.decode(self.mem.read(cmd.in_param, cq.CONTEXT_SIZE))
        if cmd.op_modifier == cq.MODIFY_MODERATION:
            queue.ctx = replace(queue.ctx, period=ctx.period, max_count=ctx.max_count)
        elif cmd.op_modifier == cq.MODIFY_RESIZE:
            resized = replace(
                queue.ctx,
                log_size=ctx.log_size,
                log_page_size=ctx.log_page_size,
                mtt_offset=ctx.mtt_offset,
            )
            queue.pages, queue.ctx = self._cq_pages(params, cqn, resized).pages, resized
        else:
            raise CommandFailed(Status.BAD_PARAM, f"MODIFY_CQ op_modifier {cmd.op_modifier}")

    def _hw2sw_cq(self, cmd: Command) -> None:
        self.state.cqs.pop(cmd.in_modifier, None)  # closing command: unknown is no failure

    # --- queue pairs -----------------------------------------------------------------------

    def _modify_qp(self, cmd: Command) -> None:
        """Every *2*_QP command: the QP must be in a state the transition starts from."""
        sources, target = qp.TRANSITIONS[cmd.opcode]
        qpn = cmd.in_modifier & qp.QPN_MASK
        if target == QpState.RST:  # 2RST is a closing command: it never fails
            self.state.qps.pop(qpn, None)
            return
        params = self._require_hca("QP transition")
        hca.check_context(self.state.icm, params.qp_table, qpn)
        current = self.state.qps.get(qpn)
        state = QpState.RST if current is None else current.state
        if state not in sources:
            raise CommandFailed(
                Status.BAD_QP_STATE, f"QP {qpn:#x} is in {state.name}, not {_names(sources)}"
            )
        if current is not None:
            current.state = target
            return
        if target == QpState.ERR:  # 2ERR needs no context
            ctx = QpContext.decode(bytes(qp.CONTEXT_SIZE))
        else:
            inbox = self.mem.read(cmd.in_param, qp.CONTEXT_OFFSET + qp.CONTEXT_SIZE)
            ctx = QpContext.decode(inbox[qp.CONTEXT_OFFSET :])
            missing = {ctx.cqn_send, ctx.cqn_recv} - set(self.state.cqs)
            if missing:
                raise CommandFailed(
                    Status.BAD_PARAM, f"QP {qpn:#x}: CQ {sorted(missing)} not hardware-owned"
                )
        self.state.qps[qpn] = QueuePair(qpn, target, ctx)

    def _query_qp(self, cmd: Command) -> None:
        params = self._require_hca("QUERY_QP")
        qpn = cmd.in_modifier & qp.QPN_MASK
        hca.check_index(params.qp_table, qpn)
        current = self.state.qps.get(qpn)
        context = bytearray(qp.CONTEXT_SIZE if current is None else current.ctx.raw)
        state = QpState.RST if current is None else current.state
        context[0] = (context[0] & 0x0F) | state << 4
        self.mem.write(cmd.out_param, bytes(qp.CONTEXT_OFFSET) + bytes(context))

    # --- multicast groups ------------------------------------------------------------------

    def _mcg(self, what: str) -> McgTable:
        self._require_hca(what)
        table = self.state.mcg
        if table is None or not mcg.HEADER_SIZE <= table.entry_size <= PAGE:
            raise CommandFailed(Status.BAD_SYS_STATE, f"{what}: INIT_HCA set up no MCG table")
        return table

    def _mgid_hash(self, cmd: Command) -> Result:
        table = self._mcg("MGID_HASH")
        return Result(out_imm=table.hash(self.mem.read(cmd.in_param, mcg.GID_SIZE)))

    def _read_mcg(self, cmd: Command) -> None:
        table = self._mcg("READ_MCG")
        self.mem.write(cmd.out_param, table.read(cmd.in_modifier))

    def _write_mcg(self, cmd: Command) -> None:
        table = self._mcg("WRITE_MCG")
        table.write(cmd.in_modifier, self.mem.read(cmd.in_param, table.entry_size))


def _names(states: frozenset[QpState]) -> str:
    return "/".join(s.name for s in sorted(states))
