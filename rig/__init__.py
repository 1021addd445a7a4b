"""mlx4 devlink-region test rig: an emulated ConnectX-3 behind QEMU, driven from Python."""

__version__ = "0.1.0"
