"""Implementations of the nn dialect in numpy, one module per family; importing registers them.

``xbar`` holds the ideal (noise-free) semantics of the xbar dialect, ``xbar_calibration`` the
calibration ops the ``calibrate`` pass inserts.
"""

from . import (
    activations,
    elementwise,
    indexing,
    layout,
    linalg,
    math_ops,
    nn,
    normalization,
    reduce,
    shape,
    xbar,
    xbar_calibration,
)

__all__ = [
    "activations", "elementwise", "indexing", "layout", "linalg", "math_ops", "nn", "normalization", "reduce",
    "shape", "xbar", "xbar_calibration",
]
