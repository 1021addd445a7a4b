"""Settings a command line may name and the environment may set otherwise (tox passes RIG_*
through): one rule for all of them, and a bad one named in one line before anything starts."""

from __future__ import annotations

import os

from rig.errors import UsageError


def choice(value: str | None, what: str, env: str, default: str, choices: tuple[str, ...]) -> str:
    """`value`, else $`env`, else `default`; UsageError naming a bad one and where it came
    from (`what`, e.g. "clock", or the variable)."""
    chosen, origin = (value, what) if value else (os.environ.get(env) or default, f"${env}")
    if chosen not in choices:
        raise UsageError(f"{origin} {chosen!r}: choose one of {', '.join(choices)}")
    return chosen


def count(env: str, default: int, most: int | None = None, least: int = 1) -> int:
    """$`env` as a whole number from `least` (to `most`), else `default`; UsageError if
    bad."""
    text = os.environ.get(env, "").strip()
    if not text:
        return default
    if not text.isdigit() or int(text) < least or (most is not None and int(text) > most):
        span = f"from {least} to {most}" if most is not None else f"of at least {least}"
        raise UsageError(f"${env} {text!r}: a whole number {span}")
    return int(text)
