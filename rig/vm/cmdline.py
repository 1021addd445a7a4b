"""The guest kernel's command line, which is also how the host talks to the guest's init.

rig-init (guest/init/rig-init) reads `rig.modprobe="<module> <param>=<value> ..."`
arguments back from /proc/cmdline, in order, with xargs; so every word here is checked to be
safe for that parsing (no quotes, backslashes or blanks inside a word).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from rig.errors import RigError

# x86 COMMAND_LINE_SIZE: the kernel silently truncates a longer command line.
MAX_LENGTH = 2047
# mlx4_core asks for this itself (request_module) once it probes: never let it load (the model
# has no InfiniBand side). mlx4_en loads: the model speaks its firmware commands.
BLACKLIST = ("mlx4_ib",)
BASE_ARGS = (
    "console=ttyS0",
    # A panic ends QEMU at once (-no-reboot) instead of leaving the host to time out.
    "panic=-1",
    # Soft lockups are reported after 2 x this many seconds (default 10). Under INTx a QEMU
    # without the rig's patch 0004 (x-intx-mmap-timeout-ms) traps every BAR0 read (~55 us
    # each under TCG), so mlx4's crdump loop of 262,144 readl()s with no cond_resched holds
    # the only vCPU for 15-30 s: a default "soft lockup" splat would report the emulator's
    # speed, not a kernel bug. 120 s still catches real hangs.
    "watchdog_thresh=60",
    # And RCU's CPU stall warning, for the same loop: at the default 21 s it fired when the
    # INTx crdump took 21.3 s on the real clock with CI's other worker busy (the warped
    # clock does not count a vCPU's wait for the model). 60 s, like the lockups above.
    "rcupdate.rcu_cpu_stall_timeout=60",
    # Lets user space map a BAR that a driver holds (CONFIG_IO_STRICT_DEVMEM refuses it), as
    # the mst kernel module lets mstflint on a real host: mstregdump then reads CR-space
    # through BAR0 (0.3 s) instead of ~35,600 trapped config-space gateway round trips
    # (3-4 s under TCG). The gateway stays one device name away (rig.jobs.readers.GATEWAY).
    "iomem=relaxed",
    "rig.root=/dev/vda",
)

_MODULE = re.compile(r"^[A-Za-z0-9_-]+$")
_PARAM = re.compile(r"^[A-Za-z0-9_-]+(=[A-Za-z0-9_.,:/+@%-]*)?$")


class CmdlineError(RigError):
    """A kernel argument the guest could not read back as meant."""


@dataclass(frozen=True)
class Modprobe:
    """A module for rig-init to load at boot, before it reports ready."""

    module: str
    params: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not _MODULE.match(self.module):
            raise CmdlineError(f"bad module name {self.module!r}")
        for p in self.params:
            if not _PARAM.match(p):
                raise CmdlineError(
                    f"bad parameter {p!r} for {self.module} (want name=value "
                    "with no blanks or quotes)"
                )

    @classmethod
    def parse(cls, text: str) -> Modprobe:
        """'mlx4_core msi_x=1 debug_level=1' -> Modprobe('mlx4_core', ('msi_x=1', ...))."""
        words = text.split()
        if not words:
            raise CmdlineError("empty modprobe request")
        return cls(words[0], tuple(words[1:]))

    def kernel_arg(self) -> str:
        return f'rig.modprobe="{" ".join((self.module, *self.params))}"'


def kernel_cmdline(modprobe: Sequence[Modprobe] = (), extra: Sequence[str] = ()) -> str:
    """The full command line: our base arguments, the boot-time modprobes, then `extra`.

    A `module_blacklist=` in `extra` is merged with ours: the kernel keeps only the last one.
    """
    blacklist = list(BLACKLIST)
    rest: list[str] = []
    for arg in extra:
        if any(c.isspace() for c in arg) and '"' not in arg:
            raise CmdlineError(f"kernel argument {arg!r} has blanks but no quotes")
        if arg.startswith("module_blacklist="):
            blacklist += [m for m in arg.split("=", 1)[1].split(",") if m and m not in blacklist]
        else:
            rest.append(arg)
    args = [
        *BASE_ARGS,
        f"module_blacklist={','.join(blacklist)}",
        *(m.kernel_arg() for m in modprobe),
        *rest,
    ]
    line = " ".join(args)
    if len(line) > MAX_LENGTH:
        raise CmdlineError(
            f"kernel command line is {len(line)} characters; the kernel keeps only {MAX_LENGTH}"
        )
    return line
