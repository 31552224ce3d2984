"""The digital reference interpreter (numpy), used for folding and for digital regions."""

from .interpreter import Interpreter, evaluate_op, run_module

__all__ = ["Interpreter", "evaluate_op", "run_module"]
