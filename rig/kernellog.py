"""What the guest kernel prints when it complains about itself."""

from __future__ import annotations

import re

KERNEL_TROUBLE = re.compile(
    r"WARNING:|Call Trace|BUG:|kernel BUG|Oops|general protection fault|cut here|"
    r"Kernel panic|soft lockup|hung_task|refcount_t:|UBSAN|KASAN|NETDEV WATCHDOG|"
    # lockdep (kernel/locking/lockdep.c), where the kernel has it
    r"possible circular locking|possible recursive locking|inconsistent lock state"
)
# mlx4's word for a firmware command that answered non-zero (cmd.c mlx4_cmd_wait/poll).
FAILED_COMMAND = re.compile(r"command 0x[0-9a-f]+ failed|BAD_OP")


def kernel_trouble(dmesg: str, failed_commands: bool = False) -> list[str]:
    """The lines of `dmesg` that report a warning, bug, oops, lockup or sanitizer hit, and
    with `failed_commands` the firmware commands the driver saw fail."""
    return [
        line
        for line in dmesg.splitlines()
        if KERNEL_TROUBLE.search(line) or (failed_commands and FAILED_COMMAND.search(line))
    ]
