"""Print the kernel's gcov counters as one base64 line of a tar.gz: every *.gcda under
/sys/kernel/debug/gcov, named relative to that directory (rig/gcov.py is the host half).

debugfs is mounted first if it is not: the guest's fstab leaves it out. debugfs gives every
file the size 0, so each one is read whole rather than archived by its stat.
"""

from __future__ import annotations

import base64
import io
import os
import subprocess
import sys
import tarfile

DEBUGFS = "/sys/kernel/debug"
GCOV = DEBUGFS + "/gcov"


def main() -> int:
    if not os.path.isdir(GCOV):
        subprocess.run(["mount", "-t", "debugfs", "debugfs", DEBUGFS], check=False)
    if not os.path.isdir(GCOV):
        print(f"no {GCOV}: not a kernel built with CONFIG_GCOV_KERNEL", file=sys.stderr)
        return 1
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for dirpath, _dirs, files in os.walk(GCOV):
            for name in sorted(files):
                if not name.endswith(".gcda"):
                    continue
                path = os.path.join(dirpath, name)
                with open(path, "rb") as f:
                    data = f.read()
                info = tarfile.TarInfo(os.path.relpath(path, GCOV))
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    sys.stdout.write(base64.b64encode(buf.getvalue()).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
