"""SSH keys: the cache's client key (baked into the root fs), each rig's own client key, and
the guest's pinned host key."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from rig.cache import cache_root
from rig.errors import ProvisionError


@dataclass(frozen=True)
class ClientKey:
    private: Path
    public: str  # "ssh-ed25519 AAAA... rig", as authorized_keys wants it


def generate(path: Path, comment: str) -> str:
    """A new passphrase-less ed25519 key pair at `path` and `path`.pub; the public line."""
    if shutil.which("ssh-keygen") is None:
        raise ProvisionError("ssh-keygen not found: install the openssh-client package")
    try:
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
            check=True,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.CalledProcessError as e:
        raise ProvisionError(f"ssh-keygen for {path} failed: {e.stderr.strip()}") from e
    return path.with_name(path.name + ".pub").read_text().strip()


def ensure_client_key(root: Path | None = None) -> ClientKey:
    """The cache's client key pair under <cache>/ssh/, created once (atomically)."""
    directory = (root or cache_root()) / "ssh"
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    private = directory / "id_ed25519"
    with (directory / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not private.is_file():
            with tempfile.TemporaryDirectory(dir=directory) as tmp:
                staged = Path(tmp) / "id_ed25519"
                generate(staged, "rig")
                staged.with_name("id_ed25519.pub").rename(directory / "id_ed25519.pub")
                staged.rename(private)  # last: its presence means the pair is complete
    return ClientKey(private, (directory / "id_ed25519.pub").read_text().strip())


def rig_key(directory: Path) -> ClientKey:
    """A new client key pair for one rig, in its private directory (the key file 0600).

    The guest's stage 1 installs its public half as root's only authorized key (the kernel
    argument `rig.sshkey=`, guest/init/initramfs-init), so one rig's key opens no other rig,
    and a stale port that now belongs to another rig refuses it.
    """
    key = Ed25519PrivateKey.generate()
    private = directory / "id_ed25519"
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.OpenSSH,
                serialization.NoEncryption(),
            )
        )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return ClientKey(private, public.decode() + " rig")
