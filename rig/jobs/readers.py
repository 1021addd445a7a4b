"""The readers of CR-space in a replay, one row each in report.json: devlink's CLI and pyroute2's
netlink read the driver's snapshots; mstflint's `mstregdump` reads the card live, as on a real
machine.

mstregdump (Debian's mstflint, in the guest's root fs) reaches a 15b3:1003's CR-space without
a kernel module of its own (mstflint's mtcr_ul): through BAR0 mapped from sysfs (resource0)
when the kernel lets it, else through the PCI config-space gateway. The rig's guests boot with
`iomem=relaxed` (rig.vm.cmdline), so with mlx4_core bound mstregdump given the card's address
maps BAR0 and reads its ~35,600 dwords as memory (0.3 s under TCG); given the card's sysfs
`config` file (GATEWAY) it takes the gateway instead, a config write and a config read per
dword, which QEMU passes to the model (cx3/pci.py): 3-4 s. It runs before the fault, while the
device works: the rig reads the device's BAR0 right after, and every dword must match it
except where a live register (the HCR, which mlx4_en's statistics commands keep writing) may
have moved.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from cx3 import layout as cr
from rig.errors import RigError
from rig.formats.crmap import Pair
from rig.formats.dumptext import DumpFormatError
from rig.formats.mstdump import check_connectx3, parse_mstdump
from rig.formats.registers import explain
from rig.formats.report import Comparison, ReaderReport
from rig.rig import Rig

logger = logging.getLogger(__name__)

MSTREGDUMP = "mstregdump"
# How mstregdump reaches CR-space: named by the card's address it maps BAR0 if it can;
# named by its config file it uses the config-space gateway.
MAPPED, GATEWAY = "mapped", "gateway"
TIMEOUT = 300.0  # through the gateway: ~35,600 round trips under TCG on a busy host
SHOWN = 16  # first unexplained offsets kept


@dataclass(frozen=True)
class LiveDump:
    """What `mstregdump <bdf>` printed in the guest, and the device's BAR0 right after."""

    command: str
    status: int
    text: str
    stderr: str
    device: bytes
    seconds: float


def take_mstregdump(rig: Rig, access: str = MAPPED) -> LiveDump:
    """mstregdump of the card through `access`: MAPPED (mstflint's own choice, BAR0 where the
    kernel lets it map) or GATEWAY (the config-space gateway)."""
    bdf = rig.dev_handle.split("/", 1)[1]
    name = bdf if access == MAPPED else f"/sys/bus/pci/devices/{bdf}/config"
    command = f"{MSTREGDUMP} {name}"
    t0 = time.monotonic()
    res = rig.sh(command, timeout=TIMEOUT, check=False)
    seconds = time.monotonic() - t0
    if res.status == 127:  # the shell's "command not found": the root fs, not the kernel
        raise RigError(f"the guest has no {MSTREGDUMP} (Debian's mstflint): {res.stderr.strip()}")
    device = rig.device.read_bar0(0, cr.SIZE)
    logger.info(f"{command}: exit {res.status}, {res.stdout.count(chr(10))} lines, {seconds:.1f} s")
    return LiveDump(command, res.status, res.stdout, res.stderr, device, seconds)


def check_mstregdump(live: LiveDump) -> tuple[ReaderReport, Pair | None]:
    """Its row, and the comparison for the CR-space map (None when it gave no dump)."""
    row = ReaderReport(
        name=MSTREGDUMP,
        reads=f"CR-space live before the fault: `{live.command}` in the guest",
        against="the device's BAR0 right after it (control socket)",
        ok=False,
    )
    source = f"`{live.command}`'s output"
    try:
        if live.status != 0:
            said = (live.stderr.strip() or live.text.strip()).splitlines()
            raise DumpFormatError(f"exit {live.status}: {said[-1] if said else 'no output'}")
        dwords = parse_mstdump(live.text, source, cr.SIZE)
        check_connectx3(dwords, source)
    except DumpFormatError as e:
        row.problem = f"gave no dump: {e}"
        return row, None
    got = bytearray(live.device)
    for d in dwords:
        got[d.address : d.address + 4] = d.data
    changes = explain(live.device, bytes(got))
    wrong = [c for c in changes if c.register is None]
    row.compared_bytes = 4 * len(dwords)
    row.unexplained_bytes = sum(c.length for c in wrong)
    row.explained = [c.as_dict() for c in changes if c.register is not None]
    row.first_unexplained = [c.offset for c in wrong][:SHOWN]
    row.ok = not wrong
    if wrong:
        where = ", ".join(f"{o:#x}" for o in row.first_unexplained[:4])
        row.problem = f"read what the device did not hold at {where}"
    pair = Pair(
        "device BAR0 vs mstregdump (live, before the fault)",
        "device",
        MSTREGDUMP,
        live.device,
        bytes(got),
        registers_explain=True,
    )
    return row, pair


def snapshot_reader(
    name: str, key: str, snapshots: list[tuple[str, int, int, list[Comparison]]]
) -> ReaderReport:
    """The row of a reader of the driver's snapshots (`key`: its side in the comparisons),
    from each region's (name, id, size, comparisons with the device's capture)."""
    read = ", ".join(f"{region} snapshot {sid}" for region, sid, _, _ in snapshots)
    row = ReaderReport(
        name=name,
        reads=f"after the fault: {read}",
        against="the device's capture at the crdump",
        ok=True,
    )
    for region, _, size, comparisons in snapshots:
        row.compared_bytes += size
        c = next(c for c in comparisons if (c.a, c.b) == ("truth", key))
        if not c.equal:
            row.ok = False
            row.unexplained_bytes += c.differing_bytes
            if region == "cr-space":  # offsets of one region only: the problem names it
                row.first_unexplained = c.first_offsets[:SHOWN]
            n = c.differing_bytes
            differ = "1 byte differs" if n == 1 else f"{n} bytes differ"
            said = f"{region}: {differ} from the capture"
            row.problem = f"{row.problem}; {said}" if row.problem else said
    return row
