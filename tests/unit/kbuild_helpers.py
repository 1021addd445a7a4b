"""Test helpers for kernel builds: git-style patches made on the fly."""

from __future__ import annotations

import difflib


def make_patch(path: str, before: str, after: str) -> str:
    """A `diff --git` patch turning `before` into `after` at `path` (strip level 1)."""
    body = difflib.unified_diff(
        before.splitlines(True), after.splitlines(True), f"a/{path}", f"b/{path}"
    )
    return f"diff --git a/{path} b/{path}\n" + "".join(body)


def new_file_patch(path: str, text: str) -> str:
    """A `diff --git` patch creating `path` with `text`."""
    lines = text.splitlines(True)
    body = "".join(f"+{ln}" for ln in lines)
    return (
        f"diff --git a/{path} b/{path}\nnew file mode 100644\n--- /dev/null\n"
        f"+++ b/{path}\n@@ -0,0 +1,{len(lines)} @@\n{body}"
    )
