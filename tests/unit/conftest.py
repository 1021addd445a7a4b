"""Fixtures shared by the unit tests."""

from tests.unit.toy_device import served

__all__ = ["served"]
