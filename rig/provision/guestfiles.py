"""The guest-side files kept under guest-kernel/ (init scripts, sshd config, kernel config
fragment)."""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

from ..errors import ProvisionError


def guest_kernel_dir() -> Path:
    """guest-kernel/ in a source checkout, else the installed guest_kernel package."""
    checkout = Path(__file__).resolve().parents[2] / "guest-kernel"
    if checkout.is_dir():
        return checkout
    # Installed layout: pyproject.toml maps guest-kernel/ to the package guest_kernel.
    spec = importlib.util.find_spec("guest_kernel")
    if spec is None or spec.origin is None:
        raise ProvisionError(f"guest-side files not found (looked in {checkout})")
    return Path(spec.origin).resolve().parent


def init_dir() -> Path:
    """guest-kernel/init: the guest's init scripts and sshd config."""
    return guest_kernel_dir() / "init"


def guest_kernel_file(name: str) -> Path:
    """A file kept directly under guest-kernel/ (the kernel config fragment)."""
    path = guest_kernel_dir() / name
    if not path.is_file():
        raise ProvisionError(f"guest kernel file {path} is missing")
    return path


def guest_file(name: str) -> Path:
    path = init_dir() / name
    if not path.is_file():
        raise ProvisionError(f"guest file {path} is missing")
    return path


def digests(names: tuple[str, ...]) -> dict[str, str]:
    """Content hashes of guest files, for the cache keys of the artifacts that embed them."""
    return {n: hashlib.sha256(guest_file(n).read_bytes()).hexdigest()[:16] for n in names}
