"""Every sample: imports, round-trips through the IR text after every pass of every pipeline, and
computes what onnxruntime computes (max abs error ≤ 1e-4 on fp32 outputs)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from afmc.targets import load_target
from helpers import TARGETS, sample_inputs, sample_path, sample_shapes

from afmc.driver import GENERIC_PIPELINE, compile_module
from afmc.frontend import import_onnx
from afmc.interp import run_module
from afmc.ir import parse_module, print_module
from afmc.pipeline import Instrumentation, parse_pipeline

BATCH = 16


def onnxruntime_outputs(name: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(sample_path(name)), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, inputs)))


class RoundTrip(Instrumentation):
    """Checks after every pass that the IR prints, parses back and prints identically."""

    def after(self, pass_name: str, module) -> None:  # type: ignore[no-untyped-def]
        text = print_module(module, constants=True)
        assert print_module(parse_module(text), constants=True) == text, pass_name
        super().after(pass_name, module)


def test_import_round_trips(sample: str) -> None:
    module = import_onnx(sample_path(sample), sample_shapes(sample, 1))
    text = print_module(module)
    assert print_module(parse_module(text)) == text
    full = print_module(module, constants=True)
    assert print_module(parse_module(full), constants=True) == full


@pytest.mark.parametrize("pipeline", ["generic", *TARGETS])
def test_every_pass_round_trips_and_matches_onnxruntime(sample: str, pipeline: str) -> None:
    module = import_onnx(sample_path(sample), sample_shapes(sample, BATCH))
    inputs = sample_inputs(sample, BATCH)
    expected = onnxruntime_outputs(sample, inputs)
    target = None if pipeline == "generic" else load_target(pipeline)
    spec = GENERIC_PIPELINE if target is None else target.pipeline
    compile_module(module, target, passes=parse_pipeline(spec).instantiate(), instruments=RoundTrip())
    got = run_module(module, inputs)
    for name, want in expected.items():
        if target is None:  # digital only: exact up to fp32 rounding
            np.testing.assert_allclose(got[name], want, rtol=0, atol=1e-4)
        else:  # ideal arrays with weights quantised to the target's bits: the same decisions
            assert np.mean(got[name].argmax(-1) == want.argmax(-1)) >= 0.9


def test_interpreter_matches_onnxruntime_on_import(sample: str) -> None:
    module = import_onnx(sample_path(sample), sample_shapes(sample, 64))
    inputs = sample_inputs(sample, 64)
    got = run_module(module, inputs)
    for name, want in onnxruntime_outputs(sample, inputs).items():
        assert got[name].dtype == want.dtype
        assert float(np.max(np.abs(got[name] - want))) <= 1e-4
