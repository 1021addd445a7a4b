"""A Mellanox ConnectX-3 (15b3:1003) model for the mlx4_core driver, served over vfio-user."""

from .control import ControlClient, ControlError, ControlServer
from .device import Cx3Device

__all__ = ["ControlClient", "ControlError", "ControlServer", "Cx3Device"]
