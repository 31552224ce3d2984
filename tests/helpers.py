"""Shared test helpers: the bundled samples, their inputs and input shapes."""

from __future__ import annotations

from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"
SAMPLE_NAMES = ["mlp_digits", "cnn_digits", "transformer_digits"]
TARGETS = ["crossbar", "pcm", "flash"]


def sample_path(name: str) -> Path:
    return SAMPLES / f"{name}.onnx"


def sample_inputs(name: str, batch: int) -> dict[str, np.ndarray]:
    with np.load(SAMPLES / f"{name}_test.npz", allow_pickle=False) as data:
        return {"input": data["input"][:batch].astype(np.float32)}


def sample_shapes(name: str, batch: int) -> dict[str, tuple[int, ...]]:
    return {"input": (batch, *sample_inputs(name, 1)["input"].shape[1:])}
