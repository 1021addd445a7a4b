"""Guest-side assets: init scripts, the kernel config fragment and example patches."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent
