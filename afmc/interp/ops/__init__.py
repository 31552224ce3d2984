"""Implementations of the nn dialect in numpy, one module per family; importing registers them.

``xbar`` holds the ideal (noise-free) semantics of the xbar dialect.
"""

from . import elementwise, nn, reduce, shape, xbar

__all__ = ["elementwise", "nn", "reduce", "shape", "xbar"]
