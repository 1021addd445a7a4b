"""One small API over the two ways the rig talks to devlink regions, so a test can run the
same steps over both and compare: iproute2's `devlink` over SSH ("cli") and the pyroute2
generic-netlink agent in the guest ("netlink").

Errors from either side become `ChannelError` with the kernel's errno when the kernel
answered (None when the tool refused the request itself, as iproute2 6.1 does for a read
without a snapshot id).
"""

from __future__ import annotations

import errno as errnos
import os
import re
from typing import Protocol

from rig.devlink.agent import NetlinkAgent
from rig.devlink.agent import NetlinkError as AgentError
from rig.devlink.cli import DevlinkCli, DevlinkCliError, RegionInfo
from rig.errors import RigError
from rig.vm.ssh import GuestSsh

CHANNELS = ("cli", "netlink")

# Drops root's capabilities (CAP_NET_ADMIN included): real, effective and saved uid all
# become nobody's, so the kernel clears the permitted and effective sets.
UNPRIVILEGED = "setpriv --reuid=65534 --regid=65534 --clear-groups"

_STRERROR = {os.strerror(code): code for code in errnos.errorcode}
_KERNEL_ANSWER = re.compile(r"kernel answers: (.+)$", re.M)


class ChannelError(RigError):
    def __init__(self, channel: str, message: str, errno: int | None) -> None:
        self.channel = channel
        self.errno = errno
        self.message = message
        name = errnos.errorcode.get(errno, "no errno") if errno is not None else "no errno"
        super().__init__(f"{channel}: {message} [{name}]")


class RegionChannel(Protocol):
    name: str

    def regions(self) -> list[RegionInfo]: ...

    def region(self, handle: str) -> RegionInfo: ...

    def read(self, handle: str, snapshot: int | None, addr: int, length: int) -> bytes: ...

    def dump(self, handle: str, snapshot: int | None) -> bytes: ...

    def delete(self, handle: str, snapshot: int | None) -> None: ...

    def new(self, handle: str, snapshot: int | None = None) -> None: ...


def cli_errno(stderr: str) -> int | None:
    """The errno in iproute2's "kernel answers: <strerror>" line; None if the kernel was
    never asked (iproute2 refused the arguments itself)."""
    m = _KERNEL_ANSWER.search(stderr)
    return _STRERROR.get(m.group(1).strip()) if m else None


class CliChannel:
    name = "cli"

    def __init__(self, cli: DevlinkCli) -> None:
        self.cli = cli

    def regions(self) -> list[RegionInfo]:
        with self._errors():
            return self.cli.regions()

    def region(self, handle: str) -> RegionInfo:
        with self._errors():
            return self.cli.region(handle)

    def read(self, handle: str, snapshot: int | None, addr: int, length: int) -> bytes:
        with self._errors():
            return self.cli.read(handle, snapshot, addr, length)

    def dump(self, handle: str, snapshot: int | None) -> bytes:
        with self._errors():
            return self.cli.dump(handle, snapshot)

    def delete(self, handle: str, snapshot: int | None) -> None:
        with self._errors():
            self.cli.delete(handle, snapshot)

    def new(self, handle: str, snapshot: int | None = None) -> None:
        with self._errors():
            self.cli.new(handle, snapshot)

    def close(self) -> None:
        pass  # one SSH command per request: nothing held open

    def _errors(self) -> _Translate:
        return _Translate(self.name)


class NetlinkChannel:
    name = "netlink"

    def __init__(self, agent: NetlinkAgent) -> None:
        self.agent = agent

    def regions(self) -> list[RegionInfo]:
        with self._errors():
            return self.agent.regions()

    def region(self, handle: str) -> RegionInfo:
        with self._errors():
            return self.agent.region(handle)

    def read(
        self, handle: str, snapshot: int | None, addr: int, length: int, direct: bool = False
    ) -> bytes:
        """direct (netlink only: iproute2 >= 6.2 decides it by itself, from whether a snapshot
        was given) sends DEVLINK_ATTR_REGION_DIRECT."""
        with self._errors():
            return self.agent.read(handle, snapshot, addr, length, direct)

    def dump(self, handle: str, snapshot: int | None) -> bytes:
        with self._errors():
            return self.agent.read(handle, snapshot)

    def chunks(
        self, handle: str, snapshot: int | None, addr: int | None = None, length: int | None = None
    ) -> list[tuple[int, bytes]]:
        """The READ reply as the kernel chunked it (netlink only: the CLI joins them)."""
        with self._errors():
            return self.agent.chunks(handle, snapshot, addr, length)

    def delete(self, handle: str, snapshot: int | None) -> None:
        with self._errors():
            self.agent.delete(handle, snapshot)

    def new(self, handle: str, snapshot: int | None = None) -> None:
        with self._errors():
            self.agent.new(handle, snapshot)

    def close(self) -> None:
        self.agent.close()

    def _errors(self) -> _Translate:
        return _Translate(self.name)


class _Translate:
    """Turns either side's failure into ChannelError; everything else passes through."""

    def __init__(self, channel: str) -> None:
        self.channel = channel

    def __enter__(self) -> None:
        return None

    def __exit__(self, t: object, e: BaseException | None, tb: object) -> None:
        if isinstance(e, DevlinkCliError):
            raise ChannelError(self.channel, e.stderr, cli_errno(e.stderr)) from e
        if isinstance(e, AgentError):
            raise ChannelError(self.channel, str(e), e.errno) from e


def open_channel(name: str, ssh: GuestSsh, as_user: str = "") -> CliChannel | NetlinkChannel:
    """A channel into the guest behind `ssh`; as_user prefixes the tool's command (e.g.
    UNPRIVILEGED). A netlink channel holds an agent process: close() it when done."""
    if name == "cli":
        return CliChannel(DevlinkCli(ssh, as_user=as_user))
    if name == "netlink":
        return NetlinkChannel(NetlinkAgent(ssh, as_user=as_user))
    raise ValueError(f"unknown channel {name!r}; choose one of {', '.join(CHANNELS)}")
