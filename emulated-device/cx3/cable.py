"""The cable: the card's two ports cabled to each other (one QSFP cable, port 1 to port 2).

A frame a port transmits arrives at the other end; the cable is the model's only wire, so
nothing leaves the card. Pulling it (`Cx3Device.set_link(False)`) takes the link of both
ports down; an open port has link while the cable is in (the far port's own state is not
looked at: a PHY keeps signalling while its port is closed).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Cable:
    ends: tuple[int, int] = (1, 2)
    plugged: bool = True

    def peer(self, port: int) -> int | None:
        """The port at the other end of `port`'s cable, if `port` is cabled."""
        a, b = self.ends
        return b if port == a else a if port == b else None
