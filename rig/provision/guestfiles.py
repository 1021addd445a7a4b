"""The guest-side files kept under guest/ (init scripts, sshd config, kernel config
fragment)."""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

from rig.errors import ProvisionError


def guest_dir() -> Path:
    """guest/ in a source checkout, else the installed guest package."""
    checkout = Path(__file__).resolve().parents[2] / "guest"
    if checkout.is_dir():
        return checkout
    # Installed layout: pyproject.toml maps guest/ to the package guest.
    spec = importlib.util.find_spec("guest")
    if spec is None or spec.origin is None:
        raise ProvisionError(f"guest-side files not found (looked in {checkout})")
    return Path(spec.origin).resolve().parent


def init_dir() -> Path:
    """guest/init: the guest's init scripts and sshd config."""
    return guest_dir() / "init"


def guest_asset(name: str) -> Path:
    """A file kept directly under guest/ (the kernel config fragment)."""
    path = guest_dir() / name
    if not path.is_file():
        raise ProvisionError(f"guest kernel file {path} is missing")
    return path


# The guest's Python for a program that needs the standard library only: without the site
# module (-S) its start-up takes half the guest CPU under TCG (0.16 s against 0.32 s, real
# clock), which a fault's kernel-log waiter and each traffic step pay.
STDLIB_PYTHON = "python3 -S"


def guest_program(name: str) -> Path:
    """A program the rig runs inside the guest (guest/programs/), uploaded on use."""
    path = guest_dir() / "programs" / name
    if not path.is_file():
        raise ProvisionError(f"guest program {path} is missing")
    return path


def guest_file(name: str) -> Path:
    path = init_dir() / name
    if not path.is_file():
        raise ProvisionError(f"guest file {path} is missing")
    return path


def digests(names: tuple[str, ...]) -> dict[str, str]:
    """Content hashes of guest files, for the cache keys of the artifacts that embed them."""
    return {n: hashlib.sha256(guest_file(n).read_bytes()).hexdigest()[:16] for n in names}
