"""afmc's IR: SSA values with tensor types, dialect ops, a constant pool, a verifier, text form."""

from .core import Attrs, Constant, Module, Op, SymbolRef, TensorType, Value
from .parser import parse_module
from .printer import print_module
from .verify import verify

__all__ = [
    "Attrs", "Constant", "Module", "Op", "SymbolRef", "TensorType", "Value",
    "parse_module", "print_module", "verify",
]
