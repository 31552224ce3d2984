#!/usr/bin/env python3
"""Train and export afmc's sample models on scikit-learn's handwritten digits.

Deterministic: fixed seeds, deterministic torch algorithms, one thread. Re-running the
script reproduces the same weights, the same ONNX files and the same accuracies.

Outputs (next to this script):

* ``mlp_digits.onnx``          MLP 64-128-64-10, input ``input`` float32 [N, 64]
* ``cnn_digits.onnx``          small CNN with BatchNormalization kept (not folded), input [N, 1, 8, 8]
* ``transformer_digits.onnx``  2-layer transformer encoder over 16 2x2 patches, input [N, 1, 8, 8]
* ``<model>_calibration.npz`` / ``<model>_test.npz``: arrays ``input`` (float32) and ``labels`` (int64)
* ``README.md``                what each model is, and its onnxruntime test accuracy

Needs: ``pip install -r samples/requirements.txt`` (torch 2.13.0 CPU, scikit-learn, onnx, onnxruntime).
Run: ``python3 samples/make_samples.py`` (about a minute on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import math
import os
import random
import sys
import time
import warnings
from pathlib import Path
from typing import Any

# Determinism knobs that must be set before torch initialises its thread pools.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import numpy as np
import onnx
import onnxruntime as ort
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

HERE = Path(__file__).resolve().parent
SEED = 20240917
OPSET = 17
N_TEST = 300
N_CALIB = 200
BATCH_DIM = "N"

# Op types each exported graph must contain (checked after export).
REQUIRED_OPS = {
    "mlp_digits": {"Gemm", "Relu"},
    "cnn_digits": {"Conv", "BatchNormalization", "Relu", "MaxPool", "GlobalAveragePool", "Gemm"},
    "transformer_digits": {
        "MatMul",
        "LayerNormalization",
        "Softmax",
        "Erf",
        "Add",
        "Transpose",
        "Reshape",
        "ReduceMean",
    },
}


# --------------------------------------------------------------------------- data


def load_splits() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Stratified train / calibration / test split of the 1797 digits, pixels scaled to [0, 1]."""
    digits = load_digits()
    x = (digits.data.astype(np.float32) / np.float32(16.0)).astype(np.float32)  # [1797, 64]
    y = digits.target.astype(np.int64)
    x_rest, x_test, y_rest, y_test = train_test_split(x, y, test_size=N_TEST, stratify=y, random_state=SEED)
    x_train, x_cal, y_train, y_cal = train_test_split(
        x_rest, y_rest, test_size=N_CALIB, stratify=y_rest, random_state=SEED + 1
    )
    return {"train": (x_train, y_train), "calibration": (x_cal, y_cal), "test": (x_test, y_test)}


def as_model_input(flat: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    return np.ascontiguousarray(flat.reshape((flat.shape[0],) + shape), dtype=np.float32)


# --------------------------------------------------------------------------- models


class MLP(nn.Module):
    """64 -> 128 -> 64 -> 10, ReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 128)
        self.fc2 = nn.Linear(128, 64)
        self.fc3 = nn.Linear(64, 10)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.fc1(x))
        x = self.act(self.fc2(x))
        return self.fc3(x)


class CNN(nn.Module):
    """Conv-BN-ReLU x2, MaxPool 2x2, Conv-ReLU, GlobalAveragePool, Flatten, Gemm."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(32)
        self.pool = nn.MaxPool2d(2)
        self.conv3 = nn.Conv2d(32, 32, 3, padding=1)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, 10)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn1(self.conv1(x)))  # [N,16,8,8]
        x = self.act(self.bn2(self.conv2(x)))  # [N,32,8,8]
        x = self.pool(x)  # [N,32,4,4]
        x = self.act(self.conv3(x))  # [N,32,4,4]
        x = self.gap(x)  # [N,32,1,1]
        x = torch.flatten(x, 1)  # [N,32]
        return self.fc(x)


class GELU(nn.Module):
    """Exact GELU written with erf: 0.5 * x * (1 + erf(x / sqrt(2)))."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


class SelfAttention(nn.Module):
    """Multi-head self-attention written out as MatMul / Reshape / Transpose / Softmax."""

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        assert d_model % n_heads == 0
        self.n_heads = n_heads
        self.d_head = d_model // n_heads
        self.q = nn.Linear(d_model, d_model)
        self.k = nn.Linear(d_model, d_model)
        self.v = nn.Linear(d_model, d_model)
        self.o = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape  # becomes a Shape/Gather subgraph in the export (b is dynamic)
        q = self.q(x).reshape(b, t, self.n_heads, self.d_head).transpose(1, 2)  # [B,H,T,Dh]
        k = self.k(x).reshape(b, t, self.n_heads, self.d_head).transpose(1, 2)
        v = self.v(x).reshape(b, t, self.n_heads, self.d_head).transpose(1, 2)
        scores = torch.matmul(q, k.transpose(-2, -1)) * (1.0 / math.sqrt(self.d_head))
        attn = torch.softmax(scores, dim=-1)
        out = torch.matmul(attn, v).transpose(1, 2).reshape(b, t, d)
        return self.o(out)


class EncoderLayer(nn.Module):
    """Pre-LN encoder layer: x + MHSA(LN(x)); x + MLP(LN(x)), MLP = Linear-GELU-Linear."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = SelfAttention(d_model, n_heads)
        self.ln2 = nn.LayerNorm(d_model)
        self.ff1 = nn.Linear(d_model, d_ff)
        self.act = GELU()
        self.ff2 = nn.Linear(d_ff, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        x = x + self.ff2(self.act(self.ff1(self.ln2(x))))
        return x


class PatchTransformer(nn.Module):
    """8x8 image -> 16 patches of 2x2 -> Linear(4, 32) + pos -> 2 encoder layers -> LN -> mean -> Linear(32, 10)."""

    def __init__(self, d_model: int = 32, n_heads: int = 2, d_ff: int = 64, n_layers: int = 2) -> None:
        super().__init__()
        self.patch = 2
        self.n_tokens = (8 // self.patch) ** 2
        self.embed = nn.Linear(self.patch * self.patch, d_model)
        self.pos = nn.Parameter(torch.zeros(1, self.n_tokens, d_model))
        self.layers = nn.ModuleList([EncoderLayer(d_model, n_heads, d_ff) for _ in range(n_layers)])
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, 10)
        nn.init.normal_(self.pos, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.patch
        g = 8 // p
        # [N,1,8,8] -> [N,1,4,2,4,2] -> [N,4,4,1,2,2] -> [N,16,4]
        x = x.reshape(-1, 1, g, p, g, p).permute(0, 2, 4, 1, 3, 5).reshape(-1, g * g, p * p)
        h = self.embed(x) + self.pos
        for layer in self.layers:
            h = layer(h)
        h = self.ln_f(h)
        h = h.mean(dim=1)  # ReduceMean over tokens
        return self.head(h)


# --------------------------------------------------------------------------- training


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    weight_decay: float,
    seed: int,
    augment_shift: bool = False,
) -> None:
    """AdamW + cosine schedule, label smoothing, fixed-seed shuffling."""
    seed_everything(seed)
    xt = torch.from_numpy(x)
    yt = torch.from_numpy(y)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(len(xt) / batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=lr, total_steps=epochs * steps_per_epoch, pct_start=0.15
    )
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.05)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(xt), generator=gen)
        for i in range(0, len(xt), batch_size):
            idx = perm[i : i + batch_size]
            xb, yb = xt[idx], yt[idx]
            if augment_shift:
                xb = random_shift(xb, gen)
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(xb), yb)
            loss.backward()
            opt.step()
            sched.step()
    model.eval()


def random_shift(xb: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Shift each [1,8,8] image by -1..1 pixels in each direction (zero fill): cheap augmentation."""
    n = xb.shape[0]
    padded = torch.nn.functional.pad(xb, (1, 1, 1, 1))
    dy = torch.randint(0, 3, (n,), generator=gen)
    dx = torch.randint(0, 3, (n,), generator=gen)
    out = torch.empty_like(xb)
    for s_y in range(3):
        for s_x in range(3):
            m = (dy == s_y) & (dx == s_x)
            if m.any():
                out[m] = padded[m, :, s_y : s_y + 8, s_x : s_x + 8]
    return out


@torch.no_grad()
def torch_accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    model.eval()
    pred = model(torch.from_numpy(x)).argmax(dim=1).numpy()
    return float((pred == y).mean())


# --------------------------------------------------------------------------- export and checks


def export(model: nn.Module, example: np.ndarray, path: Path) -> None:
    """TorchScript-based exporter (dynamo=False), constant folding off, BatchNorm kept.

    ``training=PRESERVE`` on a model in eval mode exports eval-mode BatchNormalization but skips
    torch's eval peephole, which would otherwise fuse Conv+BatchNormalization at export time.
    """
    model.eval()
    dyn = {"input": {0: BATCH_DIM}, "logits": {0: BATCH_DIM}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.from_numpy(example[:2]),),
            str(path),
            dynamo=False,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes=dyn,
            opset_version=OPSET,
            do_constant_folding=False,
            training=torch.onnx.TrainingMode.PRESERVE,
            export_params=True,
        )
    # Normalise metadata so the file does not depend on anything but the weights and the graph.
    m = onnx.load(str(path))
    m.doc_string = ""
    m.graph.name = path.stem
    m.model_version = 1
    onnx.save(m, str(path))


def ort_session(path: Path) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])


def io_desc(vi: onnx.ValueInfoProto) -> str:
    dims = []
    for d in vi.type.tensor_type.shape.dim:
        dims.append(d.dim_param if d.HasField("dim_param") else str(d.dim_value))
    elem = onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type).name
    return f"`{vi.name}` {elem} [{', '.join(dims)}]"


def check_model(name: str, path: Path, model: nn.Module, x_test: np.ndarray, y_test: np.ndarray) -> dict:
    m = onnx.load(str(path))
    onnx.checker.check_model(m, full_check=True)
    op_types = sorted({n.op_type for n in m.graph.node})
    missing = REQUIRED_OPS[name] - set(op_types)
    if missing:
        raise SystemExit(f"{name}: exported graph lacks op types {sorted(missing)}")
    opset = next(o.version for o in m.opset_import if o.domain in ("", "ai.onnx"))
    size = path.stat().st_size
    if size > 1_000_000:
        raise SystemExit(f"{name}: {size} bytes is over the 1 MB budget")

    sess = ort_session(path)
    (logits,) = sess.run(["logits"], {"input": x_test})  # whole test split as one batch
    acc = float((logits.argmax(axis=1) == y_test).mean())
    # Dynamic batch: batch 1 and batch 64 must agree with the whole-split run.
    for bs in (1, 64):
        (part,) = sess.run(["logits"], {"input": x_test[:bs]})
        assert part.shape == (bs, 10), (name, bs, part.shape)
        np.testing.assert_allclose(part, logits[:bs], rtol=1e-4, atol=1e-4)
    # onnxruntime agrees with torch.
    with torch.no_grad():
        ref = model(torch.from_numpy(x_test)).numpy()
    max_diff = float(np.abs(ref - logits).max())
    assert max_diff < 1e-3, (name, max_diff)

    n_params = sum(int(np.prod(t.dims)) for t in m.graph.initializer)
    return {
        "name": name,
        "path": path,
        "ops": op_types,
        "n_nodes": len(m.graph.node),
        "inputs": [io_desc(v) for v in m.graph.input],
        "outputs": [io_desc(v) for v in m.graph.output],
        "opset": opset,
        "size": size,
        "params": n_params,
        "acc": acc,
        "max_diff": max_diff,
    }


# --------------------------------------------------------------------------- README

DESCRIPTIONS = {
    "mlp_digits": (
        "Multilayer perceptron 64-128-64-10 with ReLU (three `Gemm` layers). "
        "Trained with AdamW, one-cycle LR, label smoothing 0.05, 120 epochs."
    ),
    "cnn_digits": (
        "Conv(1->16, 3x3, pad 1) + BatchNormalization + ReLU, Conv(16->32, 3x3, pad 1) + BatchNormalization "
        "+ ReLU, MaxPool 2x2, Conv(32->32, 3x3, pad 1) + ReLU, GlobalAveragePool, Flatten, Gemm(32->10). "
        "BatchNormalization is **not** folded into the convolutions at export (constant folding off, "
        "torch's eval peephole skipped), so afmc's `fold-batchnorm` pass has real work. "
        "Trained with +-1 pixel random shifts, AdamW, one-cycle LR, 60 epochs."
    ),
    "transformer_digits": (
        "Vision-transformer-style encoder. The 8x8 image is cut into 16 patches of 2x2 pixels inside the "
        "graph (Reshape [N,1,4,2,4,2], Transpose, Reshape [N,16,4]), linear patch embedding to d_model=32, "
        "learned positional embedding (Add), 2 pre-LN encoder layers (LayerNormalization; 2-head "
        "self-attention written out as MatMul/Reshape/Transpose/Mul/Softmax, with the batch size taken "
        "from a Shape/Gather/Unsqueeze/Concat subgraph; MLP 32->64->32 with exact GELU "
        "0.5*x*(1+erf(x/sqrt(2))); residual Adds), final LayerNormalization, mean over tokens (ReduceMean), "
        "linear head 32->10. Trained with +-1 pixel random shifts, AdamW, one-cycle LR, 150 epochs."
    ),
}


def write_readme(results: list[dict], splits: dict) -> None:
    n_test = len(splits["test"][1])
    intro = (
        "Small real models trained on scikit-learn's handwritten digits (`sklearn.datasets.load_digits`: "
        "1797 8x8 grey images, 10 classes, shipped with scikit-learn). Made by `make_samples.py` "
        "(deterministic: fixed seeds, deterministic torch kernels, one thread; re-running it reproduces "
        "the same files). Requirements: `requirements.txt`."
    )
    data = (
        "Data: pixels scaled to [0, 1] (divided by 16); stratified split with fixed seeds into "
        f"{len(splits['train'][1])} train, {len(splits['calibration'][1])} calibration and "
        f"{n_test} test images. For each model, `<model>_calibration.npz` and "
        "`<model>_test.npz` hold `input` (float32, already shaped for that model's input) and `labels` "
        "(int64); they load with `np.load(path, allow_pickle=False)`."
    )
    export_note = (
        "All models were exported with `torch.onnx.export(..., dynamo=False, do_constant_folding=False)` "
        f"at opset {OPSET}; the batch dimension is dynamic (`{BATCH_DIM}`). The graphs are left as torch "
        "emits them (Constant nodes, Shape/Gather/Unsqueeze/Concat shape subgraphs, weight initializers "
        "behind a Transpose in front of MatMul, bias-first Adds), so afmc's frontend and its "
        "fold-constants / canonicalize passes see real-world exports."
    )
    lines = [
        "# afmc sample models",
        "",
        intro,
        "",
        data,
        "",
        export_note,
        "",
        "| model | input | output | opset | nodes | parameters | file size | onnxruntime test accuracy |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        lines.append(
            f"| `{r['path'].name}` | {', '.join(r['inputs'])} | {', '.join(r['outputs'])} | {r['opset']} | "
            f"{r['n_nodes']} | {r['params']:,} | {r['size']:,} B | "
            f"{r['acc'] * 100:.2f} % ({round(r['acc'] * n_test)}/{n_test}) |"
        )
    lines.append("")
    for r in results:
        lines += [
            f"## {r['name']}",
            "",
            DESCRIPTIONS[r["name"]],
            "",
            (
                f"- file: `{r['path'].name}` ({r['size']:,} bytes), opset {r['opset']}, "
                f"{r['n_nodes']} nodes, {r['params']:,} parameters (initializer elements)"
            ),
            f"- input: {', '.join(r['inputs'])}; output: {', '.join(r['outputs'])} (unnormalised logits)",
            f"- op types: {', '.join('`' + o + '`' for o in r['ops'])}",
            f"- onnxruntime test accuracy ({n_test} images, one batch): {r['acc'] * 100:.2f} %",
            f"- data: `{r['name']}_calibration.npz`, `{r['name']}_test.npz`",
            "",
        ]
    (HERE / "README.md").write_text("\n".join(lines))


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=HERE, help="output folder (default: samples/)")
    args = ap.parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    seed_everything(SEED)

    splits = load_splits()
    specs: list[tuple[str, tuple[int, ...], type[nn.Module], dict[str, Any]]] = [
        # name, input shape (without batch), constructor, training kwargs
        (
            "mlp_digits",
            (64,),
            MLP,
            {"epochs": 120, "lr": 3e-3, "batch_size": 64, "weight_decay": 1e-4, "augment_shift": False},
        ),
        (
            "cnn_digits",
            (1, 8, 8),
            CNN,
            {"epochs": 60, "lr": 4e-3, "batch_size": 64, "weight_decay": 1e-4, "augment_shift": True},
        ),
        (
            "transformer_digits",
            (1, 8, 8),
            PatchTransformer,
            {"epochs": 150, "lr": 3e-3, "batch_size": 64, "weight_decay": 1e-2, "augment_shift": True},
        ),
    ]

    results = []
    timings = {}
    for i, (name, shape, ctor, kw) in enumerate(specs):
        x_tr, y_tr = splits["train"]
        x_cal, y_cal = splits["calibration"]
        x_te, y_te = splits["test"]
        xs_tr = as_model_input(x_tr, shape)
        xs_cal = as_model_input(x_cal, shape)
        xs_te = as_model_input(x_te, shape)
        if kw.get("augment_shift") and len(shape) != 3:
            raise ValueError("shift augmentation needs image-shaped input")
        seed_everything(SEED + 100 * i)
        model = ctor()
        t0 = time.perf_counter()
        train(model, xs_tr, y_tr, seed=SEED + 100 * i + 1, **kw)
        timings[name] = time.perf_counter() - t0
        print(
            f"{name}: trained in {timings[name]:.1f} s, torch test accuracy "
            f"{torch_accuracy(model, xs_te, y_te) * 100:.2f} %",
            flush=True,
        )

        path = out / f"{name}.onnx"
        export(model, xs_te, path)
        np.savez(out / f"{name}_calibration.npz", input=xs_cal, labels=y_cal.astype(np.int64))
        np.savez(out / f"{name}_test.npz", input=xs_te, labels=y_te.astype(np.int64))
        # Round-trip the saved arrays the way users will load them.
        with np.load(out / f"{name}_test.npz", allow_pickle=False) as z:
            assert z["input"].dtype == np.float32 and z["labels"].dtype == np.int64
        results.append(check_model(name, path, model, xs_te, y_te))

    print()
    print(f"{'model':<26}{'input':<32}{'opset':>6}{'params':>9}{'bytes':>9}{'ort acc':>9}{'train s':>9}")
    for r in results:
        print(
            f"{r['path'].name:<26}{r['inputs'][0]:<32}{r['opset']:>6}{r['params']:>9}{r['size']:>9}"
            f"{r['acc'] * 100:>8.2f}%{timings[r['name']]:>9.1f}"
        )
    for r in results:
        print(f"{r['name']} ops: {r['ops']}")
    print(f"total training time: {sum(timings.values()):.1f} s")
    if out == HERE:
        write_readme(results, splits)
    return 0


if __name__ == "__main__":
    sys.exit(main())
