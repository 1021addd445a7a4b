"""The guest's root filesystem: a small Debian (bookworm unless asked for another release,
rig.provision.suites), as one read-only base ext4 image per release.

Built with mmdebstrap from Debian packages, with no kernel modules in it (each kernel's come
from its initramfs). Every VM opens it copy-on-write, so parallel VMs share it unchanged. A
newer release brings a newer userspace (iproute2's devlink above all) to meet a newer kernel.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from rig.cache import cache_root, entry
from rig.errors import ProvisionError
from rig.progress import run_logged, step
from rig.provision.guestfiles import digests, guest_file
from rig.provision.locking import building
from rig.provision.sshkeys import ClientKey, ensure_client_key, generate
from rig.provision.suites import DEFAULT_SUITE, release_of

# Bump when the build steps change in a way the inputs below do not show.
RECIPE = 1
PACKAGES: tuple[str, ...] = (
    "openssh-server",
    "openssh-sftp-server",  # paramiko's put() uses SFTP
    "iproute2",  # ip, devlink
    "ethtool",  # mlx4_en's driver info and DUMP_ETH_STATS counters
    "kmod",
    "mount",  # not Essential in bookworm; rig-init mounts /proc, /sys, ...
    "python3",
    "procps",
    "pciutils",
    "busybox",  # poweroff -f without systemd
    "mstflint",  # mstregdump: CR-space read a third way, as on a real card (rig replay)
)
# The guest must speak netlink with the same pyroute2 the rig uses on the host.
PYROUTE2_VERSION = "0.9.7"
# Under the guest python's own version (python3.11 in bookworm): see guest_python_site.
GUEST_PYTHON_SITE = "usr/local/lib/python{version}/dist-packages"
GUEST_FILES = ("rig-init", "rig-poweroff", "sshd_config", "fstab")
# Free space left in the image for the guest's own files (sparse: costs no disk until used).
FREE_MIB = 512
IMAGE = "rootfs.img"
HOST_KEY = "host_key.pub"


@dataclass(frozen=True)
class RootFs:
    image: Path  # raw ext4, never written: VMs attach it copy-on-write
    host_key: str  # the guest sshd's public key line, pinned by the SSH client


def recipe_inputs(client_key: ClientKey, suite: str = DEFAULT_SUITE) -> dict[str, object]:
    return {
        "recipe": RECIPE,
        "suite": suite,
        "packages": list(PACKAGES),
        "pyroute2": PYROUTE2_VERSION,
        "guest_files": digests(GUEST_FILES),
        # The client key is baked into authorized_keys: a new key needs a new image.
        "client_key": client_key.public.split()[1],
    }


def ensure_rootfs(suite: str = DEFAULT_SUITE) -> RootFs:
    """The root fs of Debian `suite`'s release (a backports suite: its base release)."""
    release = release_of(suite)
    client_key = ensure_client_key()
    e = entry("rootfs", release, recipe_inputs(client_key, release))
    log = cache_root() / "logs" / f"rootfs-{e.key}.log"
    with building(e) as missing:
        if missing:
            with (
                step(f"building the guest root filesystem from {release} (log: {log})"),
                e.build() as stage,
            ):
                _build(stage, release, client_key, log)
    return RootFs(e.path / IMAGE, (e.path / HOST_KEY).read_text().strip())


def _build(stage: Path, release: str, client_key: ClientKey, log: Path) -> None:
    for tool, package in (("mmdebstrap", "mmdebstrap"), ("mke2fs", "e2fsprogs")):
        if shutil.which(tool) is None:
            raise ProvisionError(f"{tool} not found: apt-get install {package}")
    if os.geteuid() != 0:
        # Root mode gives the image real root ownership without fakeroot tricks.
        raise ProvisionError("building the guest root filesystem needs root (mmdebstrap)")
    tree = stage / "tree"
    try:
        run_logged(mmdebstrap_command(tree, release), log, f"mmdebstrap {release}")
    except BaseException:
        # mmdebstrap bind-mounts host /dev nodes, /proc and /sys into the tree; if it was
        # stopped before its own cleanup they are still there: detach them before anyone
        # deletes the staging directory.
        unmount_below(tree)
        raise
    (stage / HOST_KEY).write_text(customize(tree, client_key, stage / "wheel", log) + "\n")
    make_ext4(tree, stage / IMAGE, log)
    shutil.rmtree(tree)
    shutil.rmtree(stage / "wheel", ignore_errors=True)


def mounts_below(directory: Path, mountinfo: str) -> list[Path]:
    """Mount points at or under `directory` in /proc/self/mountinfo text, deepest first."""
    base = directory.resolve()
    found = []
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) < 5:
            continue
        # Octal escapes (\040 for a blank) as the kernel writes them.
        point = Path(fields[4].encode().decode("unicode_escape"))
        if point == base or base in point.parents:
            found.append(point)
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def unmount_below(directory: Path) -> None:
    for point in mounts_below(directory, Path("/proc/self/mountinfo").read_text()):
        subprocess.run(["umount", "--lazy", str(point)], check=False, capture_output=True)


def mmdebstrap_command(tree: Path, release: str) -> list[str]:
    excluded = ("doc", "man", "info", "locale")
    return [
        "mmdebstrap",
        "--variant=essential",
        "--mode=root",
        "--format=directory",
        '--aptopt=Apt::Install-Recommends "false"',
        # As the private apt (rig.provision.apt): a frozen mirror's sid Release is past its
        # Valid-Until; the signature is still checked.
        '--aptopt=Acquire::Check-Valid-Until "false"',
        *(f"--dpkgopt=path-exclude=/usr/share/{d}/*" for d in excluded),
        f"--include={','.join(PACKAGES)}",
        release,
        str(tree),
    ]


def customize(tree: Path, client_key: ClientKey, wheel_dir: Path, log: Path) -> str:
    """Install our init, sshd setup and pyroute2 into the tree; returns the host key line."""
    ssh = tree / "etc" / "ssh"
    for old in ssh.glob("ssh_host_*"):
        old.unlink()  # the package's keys: we want one ed25519 key that we record
    host_key = generate(ssh / "ssh_host_ed25519_key", "rig-guest")
    shutil.copyfile(guest_file("sshd_config"), ssh / "sshd_config.d" / "rig.conf")

    root_ssh = tree / "root" / ".ssh"
    root_ssh.mkdir(mode=0o700, exist_ok=True)
    (root_ssh / "authorized_keys").write_text(client_key.public + "\n")
    (root_ssh / "authorized_keys").chmod(0o600)

    for name, dest in (
        ("rig-init", "usr/sbin/rig-init"),
        ("rig-poweroff", "usr/local/sbin/rig-poweroff"),
    ):
        shutil.copyfile(guest_file(name), tree / dest)
        (tree / dest).chmod(0o755)
    os.symlink("rig-poweroff", tree / "usr/local/sbin/poweroff")
    (tree / "etc" / "rig").mkdir(exist_ok=True)
    shutil.copyfile(guest_file("fstab"), tree / "etc" / "rig" / "fstab")

    (tree / "etc" / "hostname").write_text("rig-guest\n")
    (tree / "etc" / "hosts").write_text("127.0.0.1 localhost\n127.0.1.1 rig-guest\n")
    (tree / "etc" / "resolv.conf").write_text("nameserver 10.0.2.3\n")  # QEMU slirp's DNS

    install_pyroute2(tree, wheel_dir, log)
    return host_key


def install_pyroute2(tree: Path, wheel_dir: Path, log: Path) -> None:
    """The host's pyroute2 version, unpacked as a wheel (pure Python) and byte-compiled."""
    run_logged(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--only-binary=:all:",
            "-d",
            wheel_dir,
            f"pyroute2=={PYROUTE2_VERSION}",
        ],
        log,
        f"pip download pyroute2=={PYROUTE2_VERSION}",
    )
    wheels = sorted(wheel_dir.glob("pyroute2-*.whl"))
    if len(wheels) != 1:
        raise ProvisionError(f"pip download pyroute2: expected one wheel in {wheel_dir}", log)
    site = guest_python_site(tree)
    (tree / site).mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheels[0]) as wheel:
        wheel.extractall(tree / site)
    # Byte-compile with the guest's own python: otherwise each boot compiles on first import,
    # slowly under TCG, into a copy-on-write layer that is then thrown away.
    run_logged(
        ["chroot", tree, "python3", "-m", "compileall", "-q", f"/{site}"],
        log,
        "compile pyroute2 in the guest tree",
    )


def guest_python_site(tree: Path) -> str:
    """Where the guest's python looks for site packages of our own (relative to the tree)."""
    found = subprocess.run(
        ["chroot", tree, "python3", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        capture_output=True,
        text=True,
        check=False,
    )
    if found.returncode != 0 or not found.stdout.strip():
        raise ProvisionError(f"the guest tree's python3 does not run: {found.stderr.strip()}")
    return GUEST_PYTHON_SITE.format(version=found.stdout.strip())


def make_ext4(tree: Path, image: Path, log: Path) -> None:
    """An ext4 image of `tree` via mke2fs -d (no loop mount needed); sparse on disk."""
    used = sum(
        (Path(d) / f).lstat().st_blocks * 512 for d, _, files in os.walk(tree) for f in files
    )
    size_mib = int(used * 1.2) // (1 << 20) + FREE_MIB
    # No journal: the image is never written in place, the COW layer is discarded per VM.
    run_logged(
        [
            "mke2fs",
            "-q",
            "-F",
            "-t",
            "ext4",
            "-O",
            "^has_journal",
            "-m",
            "0",
            "-L",
            "rig-root",
            "-E",
            "root_owner=0:0",
            "-d",
            tree,
            image,
            f"{size_mib}M",
        ],
        log,
        "mke2fs",
    )
    image.chmod(0o444)  # a VM that tried to open it writable would fail loudly, not corrupt it
