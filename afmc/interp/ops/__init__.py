"""Implementations of the nn dialect in numpy, one module per family; importing registers them.

``xbar`` holds the ideal (noise-free) semantics of the xbar dialect.
"""

from . import elementwise, nn, reduce, shape, xbar
from . import xbar_calibration  # noqa: F401  (calibration ops)

__all__ = ["elementwise", "nn", "reduce", "shape", "xbar"]
