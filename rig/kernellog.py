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


# The kernel's words for a guest that is gone (kernel/panic.c), and for an oops or BUG
# (arch/x86/kernel/dumpstack.c, lib/bug.c, arch/x86/mm/fault.c, kernel/watchdog.c).
PANIC = re.compile(r"Kernel panic - not syncing:? ?(.*)")
PANIC_END = re.compile(r"---\[ end Kernel panic")
# A lockup report is the watchdog's (the kernel goes on; under TCG it can be the emulator's
# speed): kernel_trouble lists it, it is no oops.
OOPS = re.compile(
    r"\bOops: |\bBUG: (?!soft lockup|workqueue lockup)|kernel BUG at |general protection fault"
)
_STAMP = re.compile(r"^\s*\[\s*\d+\.\d+\]\s*")


def panic_reason(console: str) -> str | None:
    """Why the kernel panicked ("sysrq triggered crash"), if the console shows a panic."""
    match = PANIC.search(console)
    if match is None:
        return None
    return match.group(1).strip() or "no reason given"


def oops_line(console: str) -> str | None:
    """The first line of the console that reports an oops or a BUG, without its timestamp."""
    for line in console.splitlines():
        if OOPS.search(line):
            return _STAMP.sub("", line).strip()
    return None


def report_from(console: str, pattern: re.Pattern[str], lines: int = 10) -> str:
    """The console's lines from the first that matches `pattern` on (the head of a panic's
    or an oops's report: the process, the first frames), `lines` at most."""
    text = console.splitlines()
    first = next((i for i, line in enumerate(text) if pattern.search(line)), len(text))
    return "\n".join(text[first : first + lines])
