"""A listening unix socket whose accept survives the process running out of descriptors.

At the descriptor limit accept() fails with EMFILE and leaves the connection queued: the
socket stays readable and a selector loop spins on it. So one descriptor is held in reserve;
at the limit it is given up for a moment to take the connection and close it, and the client
sees a hang-up instead of a hang.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import stat
from pathlib import Path

logger = logging.getLogger(__name__)

_OUT_OF_FDS = (errno.EMFILE, errno.ENFILE)


class Listener:
    def __init__(self, path: str | os.PathLike[str], backlog: int) -> None:
        self.path = Path(path)
        if self.path.exists() and stat.S_ISSOCK(self.path.stat().st_mode):
            self.path.unlink()  # a stale socket from an earlier run
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(self.path))
        self.sock.listen(backlog)
        self.sock.setblocking(False)
        self._spare: int | None = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)

    def accept(self) -> socket.socket | None:
        """The next connection, or None: none was waiting, or it was refused for want of a
        descriptor (logged)."""
        try:
            conn, _ = self.sock.accept()
        except BlockingIOError:
            return None  # the peer gave up between readiness and accept
        except OSError as e:
            if e.errno in _OUT_OF_FDS:
                self._refuse()
            else:
                logger.warning("%s: accept failed: %s", self.path.name, e)
            return None
        return conn

    def _refuse(self) -> None:
        if self._spare is not None:
            os.close(self._spare)
            self._spare = None
        try:
            conn, _ = self.sock.accept()
        except OSError as e:  # ENFILE, and another process took the slot the spare left
            logger.warning("%s: cannot take a connection to refuse it: %s", self.path.name, e)
        else:
            conn.close()
            logger.warning("%s: refused a connection: out of file descriptors", self.path.name)
        try:
            self._spare = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            self._spare = None  # tried again at the next refusal

    def close(self) -> None:
        """Idempotent: teardown may come more than once."""
        if self.sock.fileno() >= 0:
            self.sock.close()
            self.path.unlink(missing_ok=True)
        if self._spare is not None:
            os.close(self._spare)
            self._spare = None
