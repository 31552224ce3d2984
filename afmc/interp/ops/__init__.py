"""Implementations of the nn dialect in numpy, one module per family; importing registers them."""

from . import elementwise, nn, reduce, shape  # noqa: F401

__all__ = ["elementwise", "nn", "reduce", "shape"]
