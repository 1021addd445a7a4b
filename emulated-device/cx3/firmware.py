"""The emulated firmware: opcode dispatch and the commands mlx4_core sends (fw.c,
main.c, eq.c, icm.c).

Commands run synchronously. Every failure becomes a status with a message, never an exception:
unknown opcodes answer BAD_OP, unreachable guest memory BAD_PARAM, unmapped ICM ICM_ERROR.
Commands that only need to succeed (the driver reads a zeroed mailbox as "nothing to report")
do no DMA at all.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from vfio_user import DmaError

from . import caps, eq
from .dma import GuestMemory
from .eq import EqContext, EqError, EventQueue
from .hcr import Command, Status
from .icm import MAP_ENTRY_SIZE, MAX_MAP_ENTRIES, PAGE, IcmError, IcmMap
from .opcodes import Opcode

INIT_HCA_SIZE = 0x200
MAX_EQS = 1024  # MLX4_MAX_EQ_NUM
NUM_PORTS = 1
MAP_EQ_UNMAP = 1 << 31


@dataclass(frozen=True)
class Result:
    status: int = Status.OK
    out_imm: int | None = None  # immediate output, written to HCR out_param / the EQE
    error: str | None = None  # why the status is not OK, for the event log


class CommandFailed(Exception):
    def __init__(self, status: Status, message: str) -> None:
        super().__init__(message)
        self.status = status


Handler = Callable[[Command], Result | None]


@dataclass
class FwState:
    """Everything the driver set up; a reset replaces it whole."""

    running: bool = False
    hca_initialized: bool = False
    icm_size: int = 0
    mtt_base: int = 0
    eqe_size: int = eq.EQE_SIZE
    eqe_offset: int = 0
    icm: IcmMap = field(default_factory=IcmMap)
    eqs: dict[int, EventQueue] = field(default_factory=dict)
    event_map: dict[int, int] = field(default_factory=dict)  # event type -> eqn (MAP_EQ)


class Firmware:
    def __init__(self, mem: GuestMemory) -> None:
        self.mem = mem
        self.state = FwState()
        # A knob, not firmware state: it survives resets and shows at the next QUERY_DEV_CAP.
        self.health_buffer = True
        accept = self._accept
        self._handlers: dict[int, Handler] = {
            Opcode.QUERY_FW: self._query_fw,
            Opcode.RUN_FW: self._run_fw,
            Opcode.QUERY_DEV_CAP: self._query_dev_cap,
            Opcode.QUERY_PORT: self._query_port,
            Opcode.SET_ICM_SIZE: self._set_icm_size,
            Opcode.MAP_ICM: self._map_icm,
            Opcode.UNMAP_ICM: self._unmap_icm,
            Opcode.INIT_HCA: self._init_hca,
            Opcode.CLOSE_HCA: self._close_hca,
            Opcode.SW2HW_EQ: self._sw2hw_eq,
            Opcode.HW2SW_EQ: self._hw2sw_eq,
            Opcode.MAP_EQ: self._map_eq,
            Opcode.UNMAP_FA: self._unmap_fa,
            Opcode.SENSE_PORT: self._sense_port,
            # Success with nothing to do: the FW needs no private memory (FA, ICM_AUX pages are
            # ignored), zero outboxes are valid answers, and closing commands must not fail.
            Opcode.MAP_FA: accept,
            Opcode.MAP_ICM_AUX: accept,
            Opcode.UNMAP_ICM_AUX: accept,
            Opcode.MOD_STAT_CFG: accept,
            Opcode.QUERY_ADAPTER: accept,
            Opcode.QUERY_HCA: accept,
            Opcode.NOP: accept,
            Opcode.CONF_SPECIAL_QP: accept,
            Opcode.MAD_IFC: accept,
            Opcode.INIT_PORT: accept,
            Opcode.CLOSE_PORT: accept,
            Opcode.SET_PORT: accept,
            Opcode.SYNC_TPT: accept,
            Opcode.HW2SW_MPT: accept,
            Opcode.HW2SW_CQ: accept,
            Opcode.TO_RST_QP: accept,
            Opcode.HW2SW_SRQ: accept,
        }

    def reset(self) -> None:
        """Forget everything the driver set up, in particular every DMA target."""
        self.state = FwState()

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

    def describe(self) -> dict[str, object]:
        return {
            "fw_running": self.state.running,
            "health_buffer": self.health_buffer,
            "hca_initialized": self.state.hca_initialized,
            "icm_pages": len(self.state.icm),
            "mtt_base": self.state.mtt_base,
            "eqe_size": self.state.eqe_size,
            "event_map": {str(t): n for t, n in sorted(self.state.event_map.items())},
            "eqs": [
                {
                    "eqn": q.eqn,
                    "nent": q.nent,
                    "intr": q.intr,
                    "producer": q.producer,
                    "consumer": q.consumer,
                    "armed": q.armed,
                }
                for q in sorted(self.state.eqs.values(), key=lambda q: q.eqn)
            ],
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

    def _query_port(self, cmd: Command) -> None:
        port = cmd.in_modifier
        if not 1 <= port <= NUM_PORTS:
            raise CommandFailed(Status.BAD_PARAM, f"QUERY_PORT of port {port}")
        self.mem.write(cmd.out_param, caps.query_port(port))

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

    def _init_hca(self, cmd: Command) -> None:
        inbox = self.mem.read(cmd.in_param, INIT_HCA_SIZE)
        (eqe_flags,) = struct.unpack_from(">I", inbox, 0x058)
        stride = inbox[0x05B]
        if stride:  # EQE stride: the legacy EQE starts the slot
            self.state.eqe_size, self.state.eqe_offset = 1 << (((stride >> 4) & 7) + 5), 0
        elif eqe_flags & 1 << 29:  # 64-byte EQE: the legacy EQE is its upper half
            self.state.eqe_size, self.state.eqe_offset = 64, 32
        else:
            self.state.eqe_size, self.state.eqe_offset = eq.EQE_SIZE, 0
        (self.state.mtt_base,) = struct.unpack_from(">Q", inbox, 0x100)
        self.state.hca_initialized = True

    def _close_hca(self, cmd: Command) -> None:
        self.state.hca_initialized = False

    def _sw2hw_eq(self, cmd: Command) -> None:
        eqn = cmd.in_modifier
        if eqn >= MAX_EQS:
            raise CommandFailed(Status.BAD_PARAM, f"SW2HW_EQ of EQ {eqn}")
        if not self.state.hca_initialized:
            raise CommandFailed(Status.BAD_SYS_STATE, "SW2HW_EQ before INIT_HCA")
        if eqn in self.state.eqs:
            raise CommandFailed(Status.BAD_RES_STATE, f"EQ {eqn} already exists")
        ctx = EqContext.decode(self.mem.read(cmd.in_param, eq.CONTEXT_SIZE))
        page_size = PAGE << ctx.log_page_size
        buffer = (1 << ctx.log_nent) * self.state.eqe_size
        if buffer > eq.MAX_BUFFER or page_size > eq.MAX_BUFFER or ctx.page_offset:
            raise CommandFailed(
                Status.BAD_PARAM,
                f"EQ {eqn}: {1 << ctx.log_nent} entries, page size {page_size}, "
                f"page offset {ctx.page_offset} not supported",
            )
        queue = EventQueue(
            eqn=eqn,
            log_nent=ctx.log_nent,
            eqe_size=self.state.eqe_size,
            eqe_offset=self.state.eqe_offset,
            page_size=page_size,
            pages=[],
            intr=ctx.intr,
            producer=ctx.producer,
            consumer=ctx.consumer,
            armed=ctx.state == eq.STATE_ARMED,
            always_armed=ctx.state == eq.STATE_ALWAYS_ARMED,
        )
        mtt_va = self.state.mtt_base + ctx.mtt_offset
        queue.pages = self.state.icm.mtt_pages(self.mem, mtt_va, queue.buffer_pages())
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
