"""The datapath: what the card does when the driver rings a send doorbell, and with the frames
that arrive at a port.

`send_doorbell(qpn)` gives the walk of the QP's send queue from where the device stopped last,
one frame a step, run by the transport between messages as the card works behind a posted
doorbell. It takes every WQE the driver handed over (owner bit, see `wqe.py`), gathers its
frame (inline bytes and DMA reads through the memory key; an LSO WQE is cut into MSS-sized
TCP segments, one frame each: `frame.segment`), applies the offloads the control segment asks
for, hands the frame to the port (`transmit`), and completes the WQE on the QP's send CQ: a
send CQE if it
asked for one (CQ_UPDATE), an error CQE (`mlx4_err_cqe`, logged) if it is malformed - after
which the QP is in ERR and flushes whatever else is posted (WR_FLUSH_ERR), as the hardware
does. A CQE on an armed CQ raises the completion event on the CQ's EQ (`notify`); a CQ overrun
raises CQ_ERROR instead.

A transmitted frame goes onto the cable (`cable.py`) to the other port, which receives it:
steering (`Port.steer`: MAC table, multicast filter, promiscuous mode, VLAN filter) picks the
QP, an RSS indirection QP picks a ring QP (`rss.py`), the frame is scattered into the next
receive WQE the driver posted (producer count in the QP's doorbell record, data segments up to
a zero-length one or the invalid lkey 0x100), its outer C-VLAN tag stripped (unless the QP says
not to: param3 bit 30) and reported in the CQE, and a receive CQE goes to the ring's CQ with
the parser's checksum verdict (`frame.rx_checksum`: a good TCP/UDP checksum spares mlx4_en
checking it in software, as the card does). Frames steered nowhere
count as RDROP, frames with no posted WQE as RdropOvflw, frames longer than the WQE's buffers
as RdropLength. Nothing here raises on guest input.

Flow control: a port out of receive WQEs sends pause frames, and a sender that obeys them
(`Port.pauses`: mlx4_en asks both ports for 802.3x pause by default) keeps the frame: its
walk stops there, holding the rest of its send queue, until the device looks again
(`resume`: at the driver's next doorbell or command; mlx4_en's receive path refills its ring
and then arms its CQ). So the cable is lossless as the driver configured it, and a sender
faster than its receiver backs up into its own send queue, as on a cabled pair of ports.
"""

from __future__ import annotations

import collections
import struct
from collections.abc import Callable, Generator, Iterator

from vfio_user import DmaError

from . import cq, eq, frame, rss, wqe
from .cq import CompletionQueue, CqOverrun
from .dma import GuestMemory
from .firmware import Event, Firmware
from .icm import IcmError, MttBuffer
from .port import Port
from .qp import QpState, QueuePair, WorkQueue
from .stats import PortCounters
from .wqe import Ctrl, Gather, Piece, WqeError

MAX_FRAME = 16 << 10  # more than any frame mlx4_en sends without LSO
MAX_LSO = 256 << 10  # an LSO WQE's payload: 64 KiB (caps.LOG_MAX_GSO), or BIG TCP's more
RECV_OPCODE_SEND = 0x01  # owner_sr_opcode of a receive completion
INVALID_LKEY = 0x100  # MLX4_INVALID_LKEY / MLX4_EN_MEMTYPE_PAD: ends a receive WQE
NO_VLAN_STRIP = 1 << 30  # QP param3: leave VLAN tags in the frame
RQ_INDEX_MASK = 0xFFFF  # the receive doorbell record is a 16-bit producer count


SENDING = (QpState.RTS, QpState.ERR, QpState.SQER)  # states whose send queue the card walks


def key_to_hw_index(key: int) -> int:
    """`mr.c`: an lkey is the MPT index rotated left by 8."""
    return (key << 24 | key >> 8) & 0xFFFFFFFF


class Datapath:
    def __init__(
        self,
        firmware: Firmware,
        mem: GuestMemory,
        notify: Callable[[CompletionQueue], None],
        post_async: Callable[[tuple[Event, ...]], None],
        error: Callable[[str], None],
    ) -> None:
        self.fw = firmware
        self.mem = mem
        self._notify = notify  # post the completion EQE for this CQ (with its interrupt)
        self._post_async = post_async
        self._error = error
        self.counts: collections.Counter[str] = collections.Counter()
        # (port, frame) -> False if the far port paused it (the wire: `cable`)
        self.transmit: Callable[[int, bytes], bool] = self.cable
        self._held: list[Callable[[], bool]] = []  # walks stopped by the far port's pause

    def cable(self, port: int, data: bytes) -> bool:
        """A frame leaves `port`: with link, it arrives at the far end of the cable. False:
        it did not leave; the far end had no receive WQE for it and paused this port."""
        peer = self.fw.cable.peer(port)
        if not self.fw.link_up(port) or peer is None:
            self.fw.state.ports[port].counters.count("TDROP")
            return True
        if not self.fw.link_up(peer):  # a closed port's MAC receives nothing
            return True
        return self.receive(peer, data, sender=self.fw.state.ports[port])

    def resume(self) -> list[Callable[[], bool]]:
        """The walks a pause stopped, to run again: each sends on if the far port now has
        receive WQEs, or stops again."""
        held, self._held = self._held, []
        return held

    # --- send ------------------------------------------------------------------------------

    def send_doorbell(self, qpn: int) -> Callable[[], bool] | None:
        """The driver rang QP `qpn`'s send doorbell: the walk of its send queue, one frame a
        step (the transport runs it between messages), or None if a walk is already under
        way (it goes on to the new WQEs) or the QP cannot send."""
        qp = self.fw.state.qps.get(qpn)
        if qp is None or qp.state not in SENDING:
            name = "RST" if qp is None else qp.state.name
            self._error(f"send doorbell for QP {qpn:#x}, which is in {name}; ignored")
            return None
        sq, _ = qp.ctx.work_queues()
        if sq.log_stride != wqe.LOG_TXBB:
            self._error(f"QP {qpn:#x}: send WQE stride {1 << sq.log_stride} is not 64; ignored")
            return None
        if qp.sending:
            return None
        qp.sending = True
        state = self.fw.state
        walk = self._walk(qp, sq, self._buffer(qp), state.cqs.get(qp.ctx.cqn_send))

        def step() -> bool:
            # A reset or a 2RST_QP since the doorbell ends the walk.
            if self.fw.state is not state or state.qps.get(qpn) is not qp:
                return False
            try:
                held = next(walk)
            except StopIteration:
                qp.sending = False
                return False
            if held:  # still `sending`: a doorbell meanwhile starts no second walk
                self._held.append(step)
                return False
            return True

        return step

    def _walk(
        self, qp: QueuePair, sq: WorkQueue, buf: MttBuffer, send_cq: CompletionQueue | None
    ) -> Iterator[bool]:
        """The send engine: every WQE handed over, in order, pausing after each frame on the
        wire (False) and while the far port holds one back (True); it stops at the first WQE
        not handed over (the next doorbell resumes there)."""
        while qp.state in SENDING:
            index = qp.sq_next
            try:
                ctrl = Ctrl.decode(self._sq_read(buf, sq, index, wqe.CTRL_SIZE))
            except (DmaError, IcmError) as e:
                self._error(f"QP {qp.qpn:#x}: send queue unreadable at TXBB {index:#x}: {e}")
                return
            if ctrl.owner != (index >> sq.log_count) & 1 or ctrl.opcode == wqe.OPCODE_NOP:
                return  # not handed over (yet)
            qp.sq_next = index + ctrl.txbbs
            cqe, solicited = yield from self._send(qp, sq, buf, ctrl, index)
            if cqe is not None:
                self._complete(send_cq, qp, cqe, solicited)

    def _buffer(self, qp: QueuePair) -> MttBuffer:
        if qp.buffer is None:
            params = self.fw.state.hca
            mtt_base = 0 if params is None else params.mtt_base
            page_size = 4096 << qp.ctx.log_page_size
            qp.buffer = MttBuffer(
                self.fw.state.icm, self.mem, mtt_base + qp.ctx.mtt_offset, page_size
            )
        return qp.buffer

    @staticmethod
    def _sq_read(buf: MttBuffer, sq: WorkQueue, index: int, size: int) -> bytes:
        """`size` bytes from TXBB `index` on, wrapping at the end of the ring (a WQE posted
        through the bounce buffer continues at the start: `mlx4_en_bounce_to_desc`)."""
        start = (index & (sq.count - 1)) << wqe.LOG_TXBB
        first = min(size, sq.size - start)
        data = buf.read(sq.offset + start, first)
        if first < size:
            data += buf.read(sq.offset, size - first)
        return data

    def _send(
        self, qp: QueuePair, sq: WorkQueue, buf: MttBuffer, ctrl: Ctrl, index: int
    ) -> Generator[bool, None, tuple[bytes | None, bool]]:
        """Execute one send WQE, pausing after each frame it puts on the wire (False) and
        while the far port holds one back (True): (the CQE to post or None, whether it is
        solicited)."""
        try:
            if qp.state != QpState.RTS:
                raise WqeError(cq.WR_FLUSH_ERR, f"QP {qp.qpn:#x} is in {qp.state.name}")
            if ctrl.txbbs > sq.count:
                raise WqeError(cq.LOCAL_LENGTH_ERR, f"{ctrl.size}-byte WQE exceeds the ring")
            try:
                raw = self._sq_read(buf, sq, index, ctrl.size)
            except (DmaError, IcmError) as e:
                raise WqeError(cq.LOCAL_PROT_ERR, f"WQE unreadable: {e}") from None
            if ctrl.opcode == wqe.OPCODE_LSO:
                frames = self._segment(wqe.parse_lso(ctrl, raw))
            else:
                frames = [self._send_frame(ctrl, self._gather(wqe.parse(ctrl, raw)))]
        except WqeError as e:
            if e.syndrome == cq.WR_FLUSH_ERR:
                self.counts["tx_flushed"] += 1
            else:
                qp.state = QpState.ERR
                self.counts["tx_errors"] += 1
                self._error(
                    f"QP {qp.qpn:#x} send WQE at TXBB {index & 0xFFFF:#x}: {e} -> error CQE "
                    f"(syndrome {e.syndrome:#04x}), QP to ERR"
                )
            return cq.error_cqe(qp.qpn, index, e.syndrome, send=True), True
        port = self.fw.state.ports.get(qp.ctx.port)
        for data in frames:
            if ctrl.ins_vlan & wqe.INS_CVLAN:
                data = frame.insert_vlan(data, frame.TPID_CVLAN, ctrl.vlan_tag)
            elif ctrl.ins_vlan & wqe.INS_SVLAN:
                data = frame.insert_vlan(data, frame.TPID_SVLAN, ctrl.vlan_tag)
            data = frame.pad(data)
            if port is not None:
                while not self.transmit(port.number, data):
                    yield True
                port.counters.transmitted(data)
            self.counts["tx_frames"] += 1
            yield False
        if not ctrl.signaled:
            return None, False
        return cq.send_cqe(qp.qpn, index, ctrl.opcode), ctrl.solicited

    @staticmethod
    def _send_frame(ctrl: Ctrl, data: bytes) -> bytes:
        if ctrl.flags & (wqe.FLAG_IP_CSUM | wqe.FLAG_L4_CSUM):
            data = frame.offload_checksums(
                data, bool(ctrl.flags & wqe.FLAG_IP_CSUM), bool(ctrl.flags & wqe.FLAG_L4_CSUM)
            )
        return data

    def _segment(self, lso: wqe.Lso) -> list[bytes]:
        """LSO: the payload cut into MSS-sized TCP segments, each a frame (checksums always
        filled in: the card computes them for every segment)."""
        payload = self._gather(lso.pieces, MAX_LSO)
        try:
            return frame.segment(lso.header, payload, lso.mss)
        except ValueError as e:
            raise WqeError(cq.LOCAL_LENGTH_ERR, str(e)) from None

    def _gather(self, pieces: list[Piece], limit: int = MAX_FRAME) -> bytes:
        total = sum(len(p) if isinstance(p, bytes) else p.length for p in pieces)
        if total > limit:
            raise WqeError(cq.LOCAL_LENGTH_ERR, f"a {total}-byte frame (max {limit})")
        parts = []
        for p in pieces:
            if isinstance(p, bytes):
                parts.append(p)
                continue
            self._check_key(p)
            try:
                parts.append(self.mem.read(p.addr, p.length))
            except DmaError as e:
                raise WqeError(
                    cq.LOCAL_PROT_ERR, f"gather of {p.length} bytes at {p.addr:#x}: {e}"
                ) from None
        return b"".join(parts)

    def _check_key(self, g: Gather) -> None:
        """The lkey must name a hardware-owned MPT (with that key) covering the range."""
        params = self.fw.state.hca
        hw_key = key_to_hw_index(g.lkey)
        index = hw_key & ((1 << (0 if params is None else params.log_num_mpts)) - 1)
        mpt = self.fw.state.mpts.get(index)
        if mpt is None or mpt.key != hw_key:
            raise WqeError(cq.LOCAL_PROT_ERR, f"lkey {g.lkey:#x} names no memory region")
        if not mpt.physical:
            raise WqeError(
                cq.LOCAL_PROT_ERR, f"lkey {g.lkey:#x}: MTT-translated regions are not modelled"
            )
        if g.addr < mpt.start or g.addr + g.length > mpt.start + mpt.length:
            raise WqeError(
                cq.LOCAL_PROT_ERR,
                f"{g.length} bytes at {g.addr:#x}: outside MPT {mpt.index:#x} (lkey {g.lkey:#x})",
            )

    # --- receive ---------------------------------------------------------------------------

    def receive(self, number: int, data: bytes, sender: Port | None = None) -> bool:
        """A frame arrives at port `number` (from port `sender`, if one of the card's). False:
        the receive QP has no WQE for it and the port paused the sender, which keeps it."""
        port = self.fw.state.ports[number]
        qpn = port.steer(data)
        qp = None if qpn is None else self.fw.state.qps.get(qpn)
        if qp is not None and qp.ctx.rss and qp.state in (QpState.RTR, QpState.RTS):
            qpn, hash_value = rss.RssContext.decode(qp.ctx.raw).select(data)
            qp = self.fw.state.qps.get(qpn)
        else:
            hash_value = 0
        if qp is None or qp.state not in (QpState.RTR, QpState.RTS) or qp.ctx.rss:
            qp = None
        elif sender is not None and self._rq_full(qp) and port.pauses(sender, data):
            self.counts["rx_paused"] += 1
            return False
        port.counters.received(data)
        self.counts["rx_frames"] += 1
        if qp is None:
            port.counters.count("RDROP")
        else:
            self._deliver(qp, data, hash_value, port.counters)
        return True

    def _rq_full(self, qp: QueuePair) -> bool:
        """No receive WQE posted past the last one the card took (unreadable: not full, so
        that `_deliver` reports it)."""
        try:
            (producer,) = struct.unpack(">I", self.mem.read(qp.ctx.db_rec_addr, 4))
        except DmaError:
            return False
        return not (producer - qp.rq_next) & RQ_INDEX_MASK

    def _deliver(self, qp: QueuePair, data: bytes, hash_value: int, counters: PortCounters) -> None:
        _, rq = qp.ctx.work_queues()
        buf = self._buffer(qp)
        try:
            (producer,) = struct.unpack(">I", self.mem.read(qp.ctx.db_rec_addr, 4))
            index = qp.rq_next
            if not (producer - index) & RQ_INDEX_MASK:
                counters.count("RdropOvflw")
                return
            slot = (index & (rq.count - 1)) << rq.log_stride
            raw = buf.read(rq.offset + slot, 1 << rq.log_stride)
        except (DmaError, IcmError) as e:
            self._error(f"QP {qp.qpn:#x}: receive queue unreadable: {e}; frame dropped")
            return
        tci = None
        if not qp.ctx.param3 & NO_VLAN_STRIP:
            data, tci = frame.strip_cvlan(data)
        scatter = []
        room = 0
        for off in range(0, len(raw), wqe.SEG):
            count, lkey, addr = struct.unpack_from(">IIQ", raw, off)
            if count == 0 or lkey == INVALID_LKEY:
                break
            scatter.append(Gather(addr, count, lkey))
            room += count
        if len(data) > room:
            counters.count("RdropLength")
            return
        qp.rq_next = (index + 1) & RQ_INDEX_MASK
        recv_cq = self.fw.state.cqs.get(qp.ctx.cqn_recv)
        try:
            pos = 0
            for g in scatter:
                if pos >= len(data):
                    break
                self._check_key(g)
                chunk = data[pos : pos + g.length]
                try:
                    self.mem.write(g.addr, chunk)
                except DmaError as e:
                    raise WqeError(
                        cq.LOCAL_PROT_ERR, f"scatter of {len(chunk)} bytes at {g.addr:#x}: {e}"
                    ) from None
                pos += len(chunk)
        except WqeError as e:
            qp.state = QpState.ERR
            self._error(
                f"QP {qp.qpn:#x} receive WQE {index:#x}: {e} -> error CQE "
                f"(syndrome {e.syndrome:#04x}), QP to ERR"
            )
            self._complete(recv_cq, qp, cq.error_cqe(qp.qpn, index, e.syndrome, send=False), False)
            return
        status, csum = frame.rx_checksum(data)
        cqe = cq.recv_cqe(qp.qpn, index, len(data), RECV_OPCODE_SEND, hash_value, tci, status, csum)
        self._complete(recv_cq, qp, cqe, False)

    # --- completions -----------------------------------------------------------------------

    def _complete(
        self, queue: CompletionQueue | None, qp: QueuePair, cqe: bytes, solicited: bool
    ) -> None:
        if queue is None:
            self._error(f"QP {qp.qpn:#x}: its CQ is not hardware-owned; completion lost")
            return
        try:
            queue.post(self.mem, cqe)
        except CqOverrun as e:
            self.counts["cq_overruns"] += 1
            if not queue.overrun_reported:
                queue.overrun_reported = True
                self._error(f"{e}: CQ_ERROR event")
                self._post_async(((eq.EVENT_CQ_ERROR, eq.cq_error_eqe(queue.cqn, cq.OVERRUN)),))
            return
        except DmaError as e:
            self._error(f"CQ {queue.cqn:#x}: CQE or doorbell record unreachable: {e}")
            return
        if queue.take_event(solicited):
            self._notify(queue)

    def cq_doorbell(self, queue: CompletionQueue, word0: int, consumer: int) -> None:
        """The arm doorbell; CQEs already past the consumer index fire the event at once."""
        if queue.doorbell(word0, consumer):
            self._notify(queue)
