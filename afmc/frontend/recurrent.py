"""Import of the ONNX recurrent ops (LSTM, GRU, RNN) as the primitive ``nn`` ops they are made of.

Why lower at import rather than add ``nn.lstm``: every later stage (interpreter, partition, tile,
simulator, timing) already understands MatMul, Add, Mul, Sigmoid, Tanh, Split and Concat; a
recurrent op is nothing but these, unrolled over a sequence whose length is static here (every type
in afmc is). Lowering once, in one place, gives every stage recurrent models for free.

The two kinds of weight product are lowered differently, because they map onto the arrays
differently:

- the input projection X·Wᵀ of *all* time steps is ONE MatMul per direction ([T, B, I] @ [I, G·H]):
  it does not depend on the recurrence, so the arrays holding Wᵀ see all T·B input vectors in one
  go, exactly like a dense layer;
- the recurrence H_{t-1}·Rᵀ is one MatMul per time step, all reading the same Rᵀ constant. Each
  depends on the one before, so they run one after another whatever the hardware: ``tile`` gives
  such a chain of products of one weight (`afmc.matrix.recurrent_groups`) ONE set of arrays, which
  every step reads in turn, instead of T copies of which T−1 would sit idle at any time.

The biases Wb + Rb are added once to the projection (GRU's ``linear_before_reset`` keeps Rbh inside
the reset product, as the spec says). A missing initial state is zero, so the first step's
recurrent product (and every term with the zero state) is left out rather than multiplied by zeros.

Supported: ``direction`` forward/reverse/bidirectional, ``layout`` 0/1, ``initial_h``/``initial_c``,
biases, ``sequence_lens`` (full, shorter, even computed at run time: a step past a sequence's end
keeps the state and outputs zeros, as onnxruntime does; run in reverse, the state therefore stays
initial until the sequence's own last step), LSTM peepholes ``P`` and ``input_forget``, GRU
``linear_before_reset``, ``clip`` (on every gate's pre-activation, as onnxruntime applies it), and
the activation functions of the spec that are an ``nn`` op or a product of them (Sigmoid, Tanh,
Relu, LeakyRelu, ThresholdedRelu, HardSigmoid, Elu, Softsign, Softplus, ScaledTanh, Affine) with
``activation_alpha``/``activation_beta``. Any other activation is one ``UnsupportedError`` naming
the node and the function.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
from onnx import NodeProto

from ..errors import FrontendError, UnsupportedError
from ..ir import dtypes
from ..ir.core import TensorType, Value
from ..ir.nn import ONNX_TO_NN
from .importer import Importer, handles

#: Gates per op, in the order the weights stack them (LSTM: i, o, f, c; GRU: z, r, h).
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
#: Default activation functions (f, g, h) per op.
#: Most time steps (over all directions) a recurrent op is unrolled into: each step is ~15 ops, and
#: `afmc check` takes ~3 ms per step (4000 steps: 12 s); longer sequences need a shorter --input-shape.
MAX_UNROLLED_STEPS = 4096
DEFAULT_ACTIVATIONS = {"LSTM": ("Sigmoid", "Tanh", "Tanh"), "GRU": ("Sigmoid", "Tanh"), "RNN": ("Tanh",)}

#: Activation name (lower case) -> (ONNX op it is, alpha default, beta default); None = takes none.
#: ScaledTanh (alpha·tanh(beta·x)) and Affine (alpha·x + beta) are composed from Tanh/Mul/Add.
_ACTIVATIONS: dict[str, tuple[str, float | None, float | None]] = {
    "sigmoid": ("Sigmoid", None, None),
    "tanh": ("Tanh", None, None),
    "relu": ("Relu", None, None),
    "softsign": ("Softsign", None, None),
    "softplus": ("Softplus", None, None),
    "leakyrelu": ("LeakyRelu", 0.01, None),
    "thresholdedrelu": ("ThresholdedRelu", 1.0, None),
    "elu": ("Elu", 1.0, None),
    "hardsigmoid": ("HardSigmoid", 0.2, 0.5),
    "scaledtanh": ("ScaledTanh", 1.0, 1.0),
    "affine": ("Affine", 1.0, 0.0),
}


class _Builder:
    """Emits the ``nn`` ops of one recurrent node through the importer (so constant parts fold)."""

    def __init__(self, imp: Importer, loc: str, dtype: str) -> None:
        self.imp, self.loc, self.dtype = imp, loc, dtype
        self._constants: dict[tuple[str, bytes, tuple[int, ...]], Value] = {}

    def const(self, array: Any, dtype: str | None = None) -> Value:
        """A small constant (a scalar, an index), made once per value."""
        array = np.asarray(array, dtypes.to_numpy(dtype or self.dtype))
        key = (array.dtype.str, array.tobytes(), array.shape)
        if key not in self._constants:
            self._constants[key] = self.imp.add_constant(array, self.imp.synthetic_name(f"{self.loc}.const"), self.loc)
        return self._constants[key]

    def op(
        self,
        onnx_type: str,
        operands: Sequence[Value | None],
        shapes: Sequence[Sequence[int]],
        hint: str,
        loc: str | None = None,
        result_dtype: str | None = None,
        **given: Any,
    ) -> list[Value]:
        """``onnx_type`` on ``operands`` with the attributes ``given`` (the rest at their schema
        defaults); results of the given shapes in ``result_dtype``, by default the element type
        of the first operand."""
        imp = self.imp
        attrs = imp.attributes(onnx.helper.make_node(onnx_type, [], [], **given))
        names = [imp.synthetic_name(f"{self.loc}.{hint}") for _ in shapes]
        dtype = result_dtype or (operands[0].type.dtype if operands and operands[0] is not None else self.dtype)
        types = [TensorType(tuple(int(d) for d in shape), dtype) for shape in shapes]
        imp.emit(ONNX_TO_NN[onnx_type], operands, types, names, attrs, loc or self.loc)
        if names[0] in imp.env:  # folded into constants
            return [imp.env[name] for name in names]
        results = imp.module.ops[-1].results
        assert [r.name for r in results] == names
        return list(results)

    def one(self, onnx_type: str, operands: Sequence[Value | None], shape: Sequence[int], hint: str,
            loc: str | None = None, result_dtype: str | None = None, **given: Any) -> Value:
        return self.op(onnx_type, operands, [shape], hint, loc, result_dtype, **given)[0]

    # -- the few ops the lowering is made of ------------------------------------------------
    def pick(self, data: Value, index: int, axis: int, hint: str) -> Value:
        """``data`` at ``index`` along ``axis``, that axis dropped (Gather with a scalar index)."""
        shape = list(data.type.shape)
        del shape[axis]
        return self.one("Gather", [data, self.const(index, "i64")], shape, hint, axis=axis)

    def columns(self, data: Value, start: int, stop: int, hint: str) -> Value:
        """``data[..., start:stop]``."""
        shape = (*data.type.shape[:-1], stop - start)
        ints = [self.const([v], "i64") for v in (start, stop, -1)]
        return self.one("Slice", [data, *ints], shape, hint)

    def transpose(self, data: Value, perm: Sequence[int], hint: str) -> Value:
        shape = [data.type.shape[p] for p in perm]
        return self.one("Transpose", [data], shape, hint, perm=list(perm))

    def matmul(self, a: Value, b: Value, hint: str, loc: str) -> Value:
        return self.one("MatMul", [a, b], (*a.type.shape[:-1], b.type.shape[-1]), hint, loc)

    def binary(self, onnx_type: str, a: Value, b: Value, hint: str) -> Value:
        shape = np.broadcast_shapes(a.type.shape, b.type.shape)
        return self.one(onnx_type, [a, b], shape, hint)

    def add(self, a: Value, b: Value | None, hint: str = "add") -> Value:
        return a if b is None else self.binary("Add", a, b, hint)

    def mul(self, a: Value, b: Value, hint: str = "mul") -> Value:
        return self.binary("Mul", a, b, hint)

    def sub(self, a: Value, b: Value, hint: str = "sub") -> Value:
        return self.binary("Sub", a, b, hint)

    def split(self, data: Value, parts: int, hint: str) -> list[Value]:
        if parts == 1:
            return [data]
        size = data.type.shape[-1] // parts
        shape = (*data.type.shape[:-1], size)
        return self.op("Split", [data], [shape] * parts, hint, axis=-1, num_outputs=parts)

    def stack(self, items: Sequence[Value], axis: int, hint: str) -> Value:
        """``items`` (equal shapes) stacked along a new ``axis``."""
        axes = self.const([axis], "i64")
        expanded = []
        for item in items:
            shape = list(item.type.shape)
            shape.insert(axis, 1)
            expanded.append(self.one("Unsqueeze", [item, axes], shape, f"{hint}.item"))
        if len(expanded) == 1:
            return expanded[0]
        shape = list(expanded[0].type.shape)
        shape[axis] = len(expanded)
        return self.one("Concat", expanded, shape, hint, axis=axis)


class _Activation:
    """One of the recurrent op's activation functions, with its alpha and beta."""

    def __init__(self, name: str, alpha: float | None, beta: float | None) -> None:
        self.name, self.alpha, self.beta = name, alpha, beta

    def __call__(self, b: _Builder, x: Value, hint: str) -> Value:
        shape = x.type.shape
        if self.name == "ScaledTanh":  # alpha * tanh(beta * x)
            inner = b.one("Tanh", [b.mul(x, b.const(self.beta))], shape, hint)
            return b.mul(inner, b.const(self.alpha), hint)
        if self.name == "Affine":  # alpha * x + beta
            return b.add(b.mul(x, b.const(self.alpha)), b.const(self.beta), hint)
        given: dict[str, Any] = {k: v for k, v in (("alpha", self.alpha), ("beta", self.beta)) if v is not None}
        return b.one(self.name, [x], shape, hint, **given)


def _activations(node: NodeProto, attrs: dict[str, Any], directions: int) -> list[list[_Activation]]:
    """Per direction, the op's activation functions. ``activation_alpha``/``activation_beta`` are
    consumed in order by the functions that take the parameter (onnxruntime's reading of the spec);
    a function not given one keeps the default of the ONNX op of that name."""
    defaults = DEFAULT_ACTIVATIONS[node.op_type]
    # RNN's schema default lists two Tanh whatever the direction: only given names count
    given = any(a.name == "activations" for a in node.attribute)
    names = list(attrs.get("activations") or ()) if given else []
    if not names:
        names = list(defaults) * directions
    if len(names) != len(defaults) * directions:
        raise FrontendError(
            f"{node.op_type} with {directions} direction(s) needs {len(defaults) * directions} activations, "
            f"has {len(names)}"
        )
    alphas = list(attrs.get("activation_alpha") or ())
    betas = list(attrs.get("activation_beta") or ())
    functions: list[_Activation] = []
    for name in names:
        known = _ACTIVATIONS.get(name.lower())
        if known is None:
            raise UnsupportedError(
                f"{node.op_type} activation '{name}' is not supported (supported: "
                f"{', '.join(v[0] for v in _ACTIVATIONS.values())})"
            )
        op_name, alpha, beta = known
        if alpha is not None and alphas:
            alpha = alphas.pop(0)
        if beta is not None and betas:
            beta = betas.pop(0)
        functions.append(_Activation(op_name, alpha, beta))
    per = len(defaults)
    return [functions[d * per:(d + 1) * per] for d in range(directions)]


def _optional(imp: Importer, node: NodeProto, index: int) -> Value | None:
    return imp.operand(node.input[index]) if len(node.input) > index and node.input[index] else None


def _expect(value: Value | None, shape: Sequence[int], what: str) -> None:
    if value is not None and value.type.shape != tuple(shape):
        raise FrontendError(f"{what} has shape {list(value.type.shape)}, expected {list(shape)}")


@handles("LSTM", "GRU", "RNN")
def import_recurrent(imp: Importer, node: NodeProto, loc: str) -> None:
    """One LSTM, GRU or RNN node as per-step ``nn`` ops (see the module docstring)."""
    kind = node.op_type
    attrs = imp.attributes(node)
    x, w, r = (imp.operand(name) for name in node.input[:3])
    if x is None or w is None or r is None:
        raise FrontendError(f"{kind} needs X, W and R")
    bias, lengths, initial_h = (_optional(imp, node, i) for i in (3, 4, 5))
    initial_c = _optional(imp, node, 6) if kind == "LSTM" else None
    peepholes = _optional(imp, node, 7) if kind == "LSTM" else None
    dtype = x.type.dtype
    if dtype not in ("f16", "f32", "f64"):
        raise UnsupportedError(f"{kind} on {dtype} is not supported")
    layout = int(attrs.get("layout", 0))
    direction = attrs.get("direction", "forward")
    if direction not in ("forward", "reverse", "bidirectional"):
        raise FrontendError(f"{kind} direction '{direction}' is not forward, reverse or bidirectional")
    directions = 2 if direction == "bidirectional" else 1
    if x.type.rank != 3 or w.type.rank != 3 or r.type.rank != 3:
        raise FrontendError(f"{kind} needs rank-3 X, W and R, got {x.type}, {w.type}, {r.type}")
    steps, batch, features = (x.type.shape[1], x.type.shape[0], x.type.shape[2]) if layout else x.type.shape
    gates = GATES[kind]
    hidden = int(attrs.get("hidden_size", r.type.shape[-1]))
    if steps < 1 or hidden < 1:
        raise UnsupportedError(f"{kind} with {steps} time steps and hidden_size {hidden} is empty")
    if steps * directions > MAX_UNROLLED_STEPS:
        raise UnsupportedError(f"{kind} over {steps} time steps ({directions} direction(s)) would unroll into more "
                               f"than {MAX_UNROLLED_STEPS} steps; give a shorter sequence with --input-shape")
    _expect(w, (directions, gates * hidden, features), f"{kind} W")
    _expect(r, (directions, gates * hidden, hidden), f"{kind} R")
    _expect(bias, (directions, 2 * gates * hidden), f"{kind} B")
    state = (batch, directions, hidden) if layout else (directions, batch, hidden)
    _expect(initial_h, state, f"{kind} initial_h")
    _expect(initial_c, state, f"{kind} initial_c")
    _expect(peepholes, (directions, 3 * hidden), f"{kind} P")
    if lengths is not None:
        _expect(lengths, (batch,), f"{kind} sequence_lens")
        given = imp.constant(lengths)
        if given is not None and np.all(np.asarray(given) == steps):
            lengths = None  # every sequence is full: nothing to mask
        elif given is not None and (np.any(np.asarray(given) < 1) or np.any(np.asarray(given) > steps)):
            raise FrontendError(
                f"{kind} sequence_lens {np.asarray(given).tolist()} must lie in [1, {steps}] (the sequence length)"
            )
    clip = attrs.get("clip")
    if clip is not None and not clip > 0:
        raise FrontendError(f"{kind} clip must be positive, got {clip}")
    functions = _activations(node, attrs, directions)

    b = _Builder(imp, loc, dtype)
    sequence = b.transpose(x, (1, 0, 2), "x") if layout else x  # [T, B, I]
    names = ("forward", "reverse") if directions == 2 else (direction,)
    outputs: list[tuple[Value, Value, Value | None]] = []  # per direction: Y [T, B, H], last H, last C
    for d, name in enumerate(names):
        where = f"{loc}/{name}" if directions == 2 else loc
        db = _Builder(imp, where, dtype)
        cell = _Cell(db, kind, hidden, gates, functions[d], clip, attrs)
        cell.weights(sequence, w, r, bias, peepholes, d, where)
        state_axis = 1 if layout else 0
        h = db.pick(initial_h, d, state_axis, "h0") if initial_h is not None else None
        c = db.pick(initial_c, d, state_axis, "c0") if initial_c is not None else None
        ys: list[Value | None] = [None] * steps
        order = range(steps - 1, -1, -1) if name == "reverse" else range(steps)
        for t in order:
            new_h, new_c = cell.step(t, h, c)
            if lengths is None:
                h, c, ys[t] = new_h, new_c, new_h
                continue
            # a step past a sequence's end keeps its state and outputs zeros; run in reverse, the
            # state stays initial until the sequence's last step, where its reverse pass begins
            live = db.one("Unsqueeze", [db.one("Less", [db.const(t, lengths.type.dtype), lengths], (batch,),
                                                   f"live{t}", result_dtype="bool"), db.const([1], "i64")],
                          (batch, 1), f"live{t}")
            zeros = db.const(np.zeros((batch, hidden)))
            ys[t] = db.one("Where", [live, new_h, zeros], (batch, hidden), f"y{t}", result_dtype=dtype)
            h = db.one("Where", [live, new_h, h if h is not None else zeros], (batch, hidden), f"h{t}.kept",
                       result_dtype=dtype)
            if new_c is not None:
                c = db.one("Where", [live, new_c, c if c is not None else zeros], (batch, hidden), f"c{t}.kept",
                           result_dtype=dtype)
        assert h is not None and all(y is not None for y in ys)
        outputs.append((db.stack([y for y in ys if y is not None], 0, "y"), h, c))

    y = b.stack([o[0] for o in outputs], 1, "y")  # [T, D, B, H]
    y_h = b.stack([o[1] for o in outputs], 0, "y_h")  # [D, B, H]
    results: list[Value | None] = [y, y_h]
    if kind == "LSTM":
        results.append(b.stack([o[2] for o in outputs if o[2] is not None], 0, "y_c"))
    if layout:
        results = [
            b.transpose(y, (2, 0, 1, 3), "y_layout"),
            *(b.transpose(v, (1, 0, 2), "state_layout") for v in results[1:] if v is not None),
        ]
    if len(node.output) > len(results):
        raise FrontendError(f"{kind} has {len(results)} outputs, the node {len(node.output)}")
    for out, value in zip(node.output, results):
        if out and value is not None:
            imp.bind(out, value)


class _Cell:
    """One direction of one recurrent node: its weights, prepared once, and its step."""

    def __init__(self, b: _Builder, kind: str, hidden: int, gates: int, functions: list[_Activation],
                 clip: float | None, attrs: dict[str, Any]) -> None:
        self.b, self.kind, self.hidden, self.gates, self.functions, self.clip = b, kind, hidden, gates, functions, clip
        self.input_forget = bool(attrs.get("input_forget", 0))
        self.linear_before_reset = bool(attrs.get("linear_before_reset", 0))
        self.peep: list[Value] | None = None
        self.recurrent_bias: Value | None = None  # GRU linear_before_reset: Rbh, inside the reset product

    def weights(self, sequence: Value, w: Value, r: Value, bias: Value | None, peepholes: Value | None,
                d: int, where: str) -> None:
        b, hidden, gh = self.b, self.hidden, self.gates * self.hidden
        w_t = b.transpose(b.pick(w, d, 0, "w"), (1, 0), "w_t")  # [I, G·H]
        # one weight product for all time steps: the arrays see T·B vectors at once
        projection = b.matmul(sequence, w_t, "xw", f"{where}/input_projection")  # [T, B, G·H]
        if bias is not None:
            row = b.pick(bias, d, 0, "b")
            wb, rb = b.columns(row, 0, gh, "wb"), b.columns(row, gh, 2 * gh, "rb")
            if self.kind == "GRU" and self.linear_before_reset:
                self.recurrent_bias = b.columns(rb, 2 * hidden, gh, "rbh")
                rb = b.columns(rb, 0, 2 * hidden, "rbzr")
                zero = b.const(np.zeros(hidden))
                rb = b.one("Concat", [rb, zero], (gh,), "rb", axis=0)
            projection = b.add(projection, b.add(wb, rb, "bias"), "xwb")
        self.projection = projection
        r_t = b.transpose(b.pick(r, d, 0, "r"), (1, 0), "r_t")  # [H, G·H]
        if self.kind == "GRU" and not self.linear_before_reset:
            # the candidate's product needs the reset gate first: two products per step
            self.r_zr = b.columns(r_t, 0, 2 * hidden, "r_zr")
            self.r_h = b.columns(r_t, 2 * hidden, gh, "r_h")
        self.r_t = r_t
        if peepholes is not None:
            row = b.pick(peepholes, d, 0, "p")
            self.peep = [b.columns(row, i * hidden, (i + 1) * hidden, n) for i, n in enumerate(("p_i", "p_o", "p_f"))]
        self.where = where

    def _act(self, index: int, x: Value, hint: str) -> Value:
        if self.clip is not None:
            low, high = self.b.const(-self.clip), self.b.const(self.clip)
            x = self.b.one("Clip", [x, low, high], x.type.shape, f"{hint}.clip")
        return self.functions[index](self.b, x, hint)

    def _recur(self, h: Value | None, weight: Value, t: int, hint: str) -> Value | None:
        """h·weight, or None for the zero state (no product at all)."""
        if h is None:
            return None
        return self.b.matmul(h, weight, hint, f"{self.where}/recurrence_{hint}_t{t}")

    def step(self, t: int, h: Value | None, c: Value | None) -> tuple[Value, Value | None]:
        b = self.b
        xt = b.pick(self.projection, t, 0, f"x{t}")  # [B, G·H]
        if self.kind == "RNN":
            return self._act(0, b.add(xt, self._recur(h, self.r_t, t, "r"), f"pre{t}"), f"h{t}"), None
        if self.kind == "LSTM":
            i, o, f, g = b.split(b.add(xt, self._recur(h, self.r_t, t, "r"), f"pre{t}"), 4, f"gates{t}")
            if self.peep is not None and c is not None:
                i = b.add(i, b.mul(self.peep[0], c), f"i{t}.peep")
                f = b.add(f, b.mul(self.peep[2], c), f"f{t}.peep")
            i = self._act(0, i, f"i{t}")
            if self.input_forget:  # coupled gates: the cell forgets what it lets in
                f = b.sub(b.const(1.0), i, f"f{t}")
            else:
                f = self._act(0, f, f"f{t}")
            g = self._act(1, g, f"g{t}")
            c_new = b.mul(i, g, f"ig{t}")
            if c is not None:
                c_new = b.add(b.mul(f, c, f"fc{t}"), c_new, f"c{t}")
            if self.peep is not None:
                o = b.add(o, b.mul(self.peep[1], c_new), f"o{t}.peep")
            o = self._act(0, o, f"o{t}")
            return b.mul(o, self.functions[2](b, c_new, f"hc{t}"), f"h{t}"), c_new
        # GRU
        xz, xr, xh = b.split(xt, 3, f"x{t}.gates")
        if self.linear_before_reset:
            rec = self._recur(h, self.r_t, t, "r")
            if rec is None:
                rz = rr = None
                rh = self.recurrent_bias
            else:
                rz, rr, rh = b.split(rec, 3, f"rec{t}")
                rh = b.add(rh, self.recurrent_bias, f"rh{t}")
            z = self._act(0, b.add(xz, rz), f"z{t}")
            reset = self._act(0, b.add(xr, rr), f"r{t}")
            candidate = b.add(xh, b.mul(reset, rh, f"rrh{t}") if rh is not None else None, f"hh{t}.pre")
        else:
            rec = self._recur(h, self.r_zr, t, "rzr")
            rz, rr = b.split(rec, 2, f"rec{t}") if rec is not None else (None, None)
            z = self._act(0, b.add(xz, rz), f"z{t}")
            reset = self._act(0, b.add(xr, rr), f"r{t}")
            reset_h = b.mul(reset, h, f"rh{t}") if h is not None else None
            candidate = b.add(xh, self._recur(reset_h, self.r_h, t, "rh"), f"hh{t}.pre")
        candidate = self._act(1, candidate, f"hh{t}")
        # H = (1 − z) ⊙ candidate + z ⊙ H_{t−1}
        keep = b.sub(b.const(1.0), z, f"nz{t}")
        new = b.mul(keep, candidate, f"h{t}.new")
        return (b.add(new, b.mul(z, h, f"zh{t}"), f"h{t}") if h is not None else new), None
