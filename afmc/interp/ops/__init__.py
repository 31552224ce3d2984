"""Implementations of the nn dialect in numpy, one module per family; importing registers them.

``xbar`` holds the ideal (noise-free) semantics of the xbar dialect, ``xbar_calibration`` the
calibration ops the ``calibrate`` pass inserts.
"""

from . import elementwise, nn, reduce, shape, xbar, xbar_calibration

__all__ = ["elementwise", "nn", "reduce", "shape", "xbar", "xbar_calibration"]
