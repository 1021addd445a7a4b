"""What the guest kernel prints when it complains about itself."""

from __future__ import annotations

import re

KERNEL_TROUBLE = re.compile(
    r"WARNING:|Call Trace|BUG:|kernel BUG|Oops|general protection fault|cut here|"
    r"Kernel panic|soft lockup|hung_task|refcount_t:|UBSAN|KASAN"
)


def kernel_trouble(dmesg: str) -> list[str]:
    """The lines of `dmesg` that report a warning, bug, oops, lockup or sanitizer hit."""
    return [line for line in dmesg.splitlines() if KERNEL_TROUBLE.search(line)]
