"""Fixtures shared by the unit tests."""

from tests.unit.model_proc import model
from tests.unit.toy_device import served

__all__ = ["model", "served"]
