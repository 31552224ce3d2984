"""An ONNX backend (``onnx.backend.base.Backend``) over the frontend and the reference interpreter.

It exists to run ONNX's conformance node tests: ``prepare`` imports the model (a model using an
op or feature afmc does not claim is skipped via ``unittest.SkipTest``), and ``run`` evaluates it
with ``afmc.interp.Interpreter``. Models whose inputs have dynamic dimensions are imported on the
first ``run``, when the input shapes are known.
"""

from __future__ import annotations

import unittest
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx
from onnx.backend.base import Backend, BackendRep, namedtupledict

from .errors import UnsupportedError
from .frontend import import_model
from .interp import Interpreter
from .ir.core import Module


def _import(model: onnx.ModelProto, input_shapes: Mapping[str, Sequence[int]] | None = None) -> Module:
    """The frontend, with afmc's unsupported features turned into test skips."""
    try:
        return import_model(model, input_shapes)
    except UnsupportedError as exc:
        raise unittest.SkipTest(f"afmc does not support this model: {exc.render()}") from None


def _is_static(info: onnx.ValueInfoProto) -> bool:
    tensor = info.type.tensor_type
    return tensor.HasField("shape") and all(d.HasField("dim_value") for d in tensor.shape.dim)


class AfmcBackendRep(BackendRep):
    """A prepared model: its imported module, or the model itself until input shapes are known."""

    def __init__(self, model: onnx.ModelProto, module: Module | None) -> None:
        initializers = {t.name for t in model.graph.initializer}
        self.input_names = [i.name for i in model.graph.input if i.name not in initializers]
        self.model = model
        self.module = module
        self._by_shapes: dict[tuple[tuple[int, ...], ...], Module] = {}

    def _module_for(self, feeds: Mapping[str, np.ndarray]) -> Module:
        if self.module is not None:
            return self.module
        key = tuple(tuple(feeds[n].shape) for n in self.input_names if n in feeds)
        if key not in self._by_shapes:
            shapes = {n: tuple(feeds[n].shape) for n in self.input_names if n in feeds}
            self._by_shapes[key] = _import(self.model, shapes)
        return self._by_shapes[key]

    def run(self, inputs: Any, **kwargs: Any) -> tuple[Any, ...]:
        """Outputs in the graph's output order, as a named tuple (the ONNX backend convention)."""
        if isinstance(inputs, Mapping):
            feeds = {name: np.asarray(array) for name, array in inputs.items()}
        else:
            arrays = [inputs] if isinstance(inputs, np.ndarray) else list(inputs)
            feeds = {name: np.asarray(array) for name, array in zip(self.input_names, arrays)}
        module = self._module_for(feeds)
        outputs = Interpreter(module).run(feeds)
        names = [value.name for value in module.outputs]
        return namedtupledict("Outputs", names)(*[outputs[n] for n in names])  # type: ignore[no-any-return]


class AfmcBackend(Backend):
    """CPU only: the reference interpreter is numpy."""

    @classmethod
    def prepare(cls, model: onnx.ModelProto, device: str = "CPU", **kwargs: Any) -> AfmcBackendRep:
        super().prepare(model, device, **kwargs)
        initializers = {t.name for t in model.graph.initializer}
        static = all(_is_static(i) for i in model.graph.input if i.name not in initializers)
        return AfmcBackendRep(model, _import(model) if static else None)

    @classmethod
    def supports_device(cls, device: str) -> bool:
        return device.upper() == "CPU"


prepare = AfmcBackend.prepare
run_model = AfmcBackend.run_model
supports_device = AfmcBackend.supports_device
