"""Synthetic inputs a model accepts: what the graph says about each input, then a search that runs it.

Without ``--data`` onnxshrink makes random inputs. Random values of a random size rarely run a real
model, so before giving up this module reads the graph and then tries sizes in onnxruntime:

- **Integer inputs that index a table** (``Gather`` indices, followed through Cast, Unsqueeze,
  Squeeze, Reshape, Flatten, Expand, Transpose, Slice, Tile, Concat and Identity) are drawn from
  ``[0, rows)`` of the smallest such table; other integer inputs from ``[0, 4)``.
- **Masks** are all ones (``True`` for bool): inputs whose name contains ``mask``, every bool input,
  and integer inputs that reach a ``Where`` condition or ``And``/``Or``/``Not``/``Xor`` (a ``Mul`` is
  not taken as evidence: ids are multiplied too).
- **Dimensions** named by the same symbol on several inputs take one value; a dimension that a
  consumer fixes (the inner dimension of a ``MatMul``/``Gemm`` with a constant weight, the channels of a
  ``Conv``/``ConvTranspose``/``BatchNormalization``/``InstanceNormalization``, the feature size of an
  ``LSTM``/``GRU``/``RNN``, the normalized axes of ``LayerNormalization``, a broadcast against a
  constant in ``Add``/``Sub``/``Mul``/``Div``; followed through Cast, Identity, Transpose and unary
  element-wise ops) takes that value.
- **Other dynamic dimensions** are searched: the batch dimension (axis 0 of an input of rank 2 or
  more) is 1; the dynamic dimensions of float inputs of rank 4 or more (images, videos) try
  ``IMAGE_SIZES`` (multiples of 32, so strided and upsampled feature maps match); every other dynamic
  dimension tries ``OTHER_SIZES``. First all free dimensions move together through their lists, then
  each one alone, until onnxruntime runs the model on one feed (at most ``MAX_TRIALS`` tries or
  ``MAX_SEARCH_S`` seconds).

What was chosen is described in ``Plan.notes`` (the data warnings of the report). When nothing runs,
a ``UsageError`` names the input and suggests ``--input-shape NAME=...`` or ``--data``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx

from onnxshrink.errors import UsageError, one_line
from onnxshrink.ir.walk import node_attribute

IMAGE_SIZES = (224, 256, 320, 192, 160, 128, 96, 64, 32, 384, 448, 512, 640)
OTHER_SIZES = (8, 16, 32, 64, 128, 1, 2, 4, 256, 512, 1024, 2048, 4096, 8192, 16000, 16384)
DEFAULT_INT_HIGH = 4
MAX_TRIALS = 48
MAX_SEARCH_S = 60.0

_VALUE_OPS = {
    "Cast",
    "Identity",
    "Unsqueeze",
    "Squeeze",
    "Reshape",
    "Flatten",
    "Expand",
    "Transpose",
    "Slice",
    "Tile",
    "Concat",
    "CastLike",
}
_MASK_OPS = {"And", "Or", "Not", "Xor"}
_UNARY_OPS = {
    "Cast",
    "Identity",
    "Relu",
    "Neg",
    "Abs",
    "Sqrt",
    "Exp",
    "Log",
    "Sigmoid",
    "Tanh",
    "Floor",
    "Ceil",
    "Round",
    "Dropout",
    "LeakyRelu",
    "Elu",
    "Softplus",
    "CastLike",
}
_BROADCAST_OPS = {"Add", "Sub", "Mul", "Div"}
_MAX_DEPTH = 16


@dataclass
class InputHints:
    """What the graph says about one input."""

    index_bound: int | None = None  # values must stay in [0, index_bound)
    index_node: str | None = None
    mask_use: bool = False  # reaches a Where condition or And/Or/Not/Xor
    mask: bool = False  # decided by is_mask
    fixed: dict[int, tuple[int, str]] = field(default_factory=dict)  # axis -> (size, why)


@dataclass
class Plan:
    """The shapes and value rules chosen for synthetic inputs, and how they were found."""

    shapes: dict[str, tuple[int, ...]]
    hints: dict[str, InputHints]
    notes: list[str]


# ------------------------------------------------------------------------------------------ graph


class _Graph:
    def __init__(self, model: onnx.ModelProto):
        graph = model.graph
        self.consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
        for node in graph.node:
            for i, name in enumerate(node.input):
                if name:
                    self.consumers.setdefault(name, []).append((node, i))
        self.const_shapes: dict[str, tuple[int, ...]] = {t.name: tuple(t.dims) for t in graph.initializer}
        for node in graph.node:
            if node.op_type == "Constant" and node.output:
                for attr in node.attribute:
                    if attr.name == "value" and attr.HasField("t"):
                        self.const_shapes[node.output[0]] = tuple(attr.t.dims)

    def const(self, name: str) -> tuple[int, ...] | None:
        return self.const_shapes.get(name)


def analyse(model: onnx.ModelProto, names: list[str]) -> dict[str, InputHints]:
    """Hints for each input in ``names`` from the main graph (subgraphs are not followed)."""
    graph = _Graph(model)
    hints = {}
    for name in names:
        h = InputHints()
        _trace_values(graph, name, h, 0, set())
        rank = _declared_rank(model, name)
        if rank is not None:
            _trace_dims(graph, name, list(range(rank)), h, 0, set())
        hints[name] = h
    return hints


def _declared_rank(model: onnx.ModelProto, name: str) -> int | None:
    for vi in model.graph.input:
        if vi.name == name and vi.type.tensor_type.HasField("shape"):
            return len(vi.type.tensor_type.shape.dim)
    return None


def _trace_values(graph: _Graph, tensor: str, h: InputHints, depth: int, seen: set[str]) -> None:
    """Follow the input's values forward: Gather indices bound them, mask-like consumers mark a mask."""
    if depth > _MAX_DEPTH or tensor in seen:
        return
    seen.add(tensor)
    for node, slot in graph.consumers.get(tensor, []):
        op = node.op_type
        if op == "Gather" and slot == 1:
            table = graph.const(node.input[0])
            if table:
                axis = int(node_attribute(node, "axis", 0))
                rows = table[axis] if -len(table) <= axis < len(table) else None
                if rows and (h.index_bound is None or rows < h.index_bound):
                    h.index_bound, h.index_node = int(rows), node.name or node.output[0]
        elif op == "Where" and slot == 0 or op in _MASK_OPS:
            h.mask_use = True
        elif op in _VALUE_OPS and (slot == 0 or op == "Concat"):
            for out in node.output[:1]:
                _trace_values(graph, out, h, depth + 1, seen)
        elif op == "Sub" and graph.const(node.input[0]) is not None:  # 1 - mask
            _trace_values(graph, node.output[0], h, depth + 1, seen)


def _trace_dims(graph: _Graph, tensor: str, axes: list[int | None], h: InputHints, depth: int, seen: set[str]) -> None:
    """Follow the input's axes forward (``axes[k]``: the input axis now at position k) to consumers that fix a size."""
    if depth > _MAX_DEPTH or tensor in seen or all(a is None for a in axes):
        return
    seen.add(tensor)
    rank = len(axes)

    def fix(position: int, size: int, why: str) -> None:
        if -rank <= position < rank and size > 0:
            axis = axes[position]
            if axis is not None and axis not in h.fixed:
                h.fixed[axis] = (int(size), why)

    for node, slot in graph.consumers.get(tensor, []):
        op, label = node.op_type, f"{node.op_type} {node.name or node.output[0]!r}"
        other = [graph.const(n) if n else None for n in node.input]
        if op == "MatMul" and slot == 0 and other[1] and len(other[1]) >= 2:
            fix(rank - 1, other[1][-2], label)
        elif op == "MatMul" and slot == 1 and other[0] and len(other[0]) >= 2:
            fix(rank - 2, other[0][-1], label)
        elif op == "Gemm" and slot == 0 and other[1] and len(other[1]) == 2:
            k = other[1][1] if node_attribute(node, "transB", 0) else other[1][0]
            fix(0 if node_attribute(node, "transA", 0) else 1, k, label)
        elif op == "Conv" and slot == 0 and other[1] and len(other[1]) >= 3:
            fix(1, other[1][1] * int(node_attribute(node, "group", 1)), label)
        elif op == "ConvTranspose" and slot == 0 and other[1] and len(other[1]) >= 3:
            fix(1, other[1][0], label)
        elif op in ("BatchNormalization", "InstanceNormalization") and slot == 0 and other[1] and len(other[1]) == 1:
            fix(1, other[1][0], label)
        elif (
            op in ("LSTM", "GRU", "RNN")
            and slot == 0
            and other[1]
            and len(other[1]) == 3
            and not node_attribute(node, "layout", 0)
        ):
            fix(2, other[1][2], label)
        elif op == "LayerNormalization" and slot == 0 and other[1]:
            for k, size in enumerate(reversed(other[1])):
                fix(rank - 1 - k, size, label)
        elif op in _BROADCAST_OPS and len(node.input) == 2:
            const = other[1 - slot]
            if const is None:
                continue
            for k, size in enumerate(reversed(const)):
                if size > 1 and k < rank:
                    fix(rank - 1 - k, size, f"{label} (broadcast with a constant)")
            if len(const) <= rank:
                _trace_dims(graph, node.output[0], axes, h, depth + 1, seen)
        elif op == "Transpose" and slot == 0:
            perm = node_attribute(node, "perm", None) or list(reversed(range(rank)))
            if len(perm) == rank:
                _trace_dims(graph, node.output[0], [axes[p] for p in perm], h, depth + 1, seen)
        elif op in _UNARY_OPS and slot == 0:
            _trace_dims(graph, node.output[0], axes, h, depth + 1, seen)


# ------------------------------------------------------------------------------------------ values


def random_input(rng: np.random.Generator, spec, shape: tuple[int, ...], hints: InputHints | None) -> np.ndarray:
    """One array for ``spec`` (an ``InputSpec``) following ``hints``; raises UsageError for unknown types."""
    dt = spec.dtype
    if hints is not None and hints.mask or dt == np.bool_:
        return np.ones(shape, dtype=dt)
    if np.issubdtype(dt, np.integer):
        high = hints.index_bound if hints is not None and hints.index_bound else DEFAULT_INT_HIGH
        return rng.integers(0, high, size=shape).astype(dt)
    if dt.kind in "fc" or dt.kind == "V" or "float" in dt.name:  # includes ml_dtypes bfloat16/float8
        return rng.standard_normal(size=shape).astype(np.float32).astype(dt)
    raise UsageError(
        f"cannot synthesize data for graph input {spec.name!r} of type {spec.type_name}; give real data with --data"
    )


def is_mask(spec, hints: InputHints) -> bool:
    """A mask: named so, a bool, or an integer input used as a condition or a factor."""
    if "mask" in spec.name.lower() or spec.dtype == np.bool_:
        return True
    return bool(np.issubdtype(spec.dtype, np.integer) and hints.mask_use and not hints.index_bound)


# ------------------------------------------------------------------------------------------ search


@dataclass
class _Var:
    key: tuple
    places: list[tuple[str, int]]  # (input name, axis)
    ladder: tuple[int, ...]
    kind: str  # "batch", "image" or "other"
    label: str


def plan_shapes(
    model: onnx.ModelProto,
    specs: list,
    given: dict[str, tuple[int, ...]],
    runner: Callable[[dict[str, np.ndarray]], None] | None,
    seed: int = 0,
) -> Plan:
    """Choose a shape for every input (``given`` ones are kept) and check that the model runs.

    ``runner(feed)`` runs the model once (raising on failure); ``None`` skips the check.
    """
    hints = analyse(model, [s.name for s in specs])
    for spec in specs:
        hints[spec.name].mask = is_mask(spec, hints[spec.name])
    shapes: dict[str, list[int | None]] = {}
    named: dict[str, int] = {}  # symbol -> size from a given shape or a consumer
    notes: list[str] = []
    symbols = _symbols(model)
    for spec in specs:
        if spec.name in given:
            shapes[spec.name] = list(given[spec.name])
            for axis, symbol in symbols.get(spec.name, {}).items():
                if axis < len(given[spec.name]):
                    named.setdefault(symbol, given[spec.name][axis])
        else:
            shapes[spec.name] = list(spec.shape)
    for spec in specs:  # sizes fixed by a consumer, shared through symbols
        if spec.name in given:
            continue
        for axis, (size, why) in sorted(hints[spec.name].fixed.items()):
            if axis < len(shapes[spec.name]) and shapes[spec.name][axis] is None:
                shapes[spec.name][axis] = size
                notes.append(f"{spec.name} dim {axis} = {size} (fixed by {why})")
                symbol = symbols.get(spec.name, {}).get(axis)
                if symbol:
                    named.setdefault(symbol, size)
    variables: dict[tuple, _Var] = {}
    for spec in specs:
        shape = shapes[spec.name]
        for axis, size in enumerate(shape):
            if size is not None:
                continue
            symbol = symbols.get(spec.name, {}).get(axis)
            if symbol and symbol in named:
                shape[axis] = named[symbol]
                continue
            key = ("symbol", symbol) if symbol else ("anon", spec.name, axis)
            kind = _kind(spec, axis, symbol)
            ladder = {"batch": (1,), "image": IMAGE_SIZES, "other": OTHER_SIZES}[kind]
            var = variables.setdefault(key, _Var(key, [], ladder, kind, symbol or f"{spec.name} dim {axis}"))
            if kind == "batch" and var.kind != "batch":
                var.kind, var.ladder = "batch", (1,)
            var.places.append((spec.name, axis))

    def assign(values: dict[tuple, int]) -> dict[str, tuple[int, ...]]:
        out = {n: list(s) for n, s in shapes.items()}
        for key, var in variables.items():
            for name, axis in var.places:
                out[name][axis] = values[key]
        return {n: tuple(int(d) for d in s) for n, s in out.items()}

    if runner is None:
        chosen = assign({k: v.ladder[0] for k, v in variables.items()})
        _describe(notes, variables, {k: v.ladder[0] for k, v in variables.items()}, 0, checked=False)
        return Plan(chosen, hints, notes)

    tried: list[dict[str, tuple[int, ...]]] = []
    first_error: str | None = None
    started = time.perf_counter()
    for values in _candidates(variables):
        candidate = assign(values)
        if candidate in tried:
            continue
        if len(tried) >= MAX_TRIALS or (tried and time.perf_counter() - started > MAX_SEARCH_S):
            break
        tried.append(candidate)
        rng = np.random.default_rng(seed)
        feed = {s.name: random_input(rng, s, candidate[s.name], hints[s.name]) for s in specs}
        try:
            runner(feed)
        except Exception as exc:  # noqa: BLE001 - any onnxruntime failure means: try the next size
            first_error = first_error or one_line(exc, 300)
            continue
        _describe(notes, variables, values, len(tried), checked=True)
        return Plan(candidate, hints, notes)
    raise UsageError(_nothing_runs(specs, variables, tried, first_error))


def _symbols(model: onnx.ModelProto) -> dict[str, dict[int, str]]:
    out: dict[str, dict[int, str]] = {}
    for vi in model.graph.input:
        t = vi.type.tensor_type
        if t.HasField("shape"):
            out[vi.name] = {i: d.dim_param for i, d in enumerate(t.shape.dim) if d.dim_param and not d.dim_value}
    return out


def _kind(spec, axis: int, symbol: str | None) -> str:
    rank = len(spec.shape)
    if axis == 0 and rank >= 2:
        return "batch"
    if symbol and "batch" in symbol.lower():
        return "batch"
    if rank >= 4 and (spec.dtype.kind == "f" or "float" in spec.dtype.name):
        return "image"
    return "other"


def _candidates(variables: dict[tuple, _Var]):
    """All free dims together through their lists, then each one alone (the others at their first size)."""
    if not variables:
        yield {}
        return
    longest = max(len(v.ladder) for v in variables.values())
    for i in range(longest):
        yield {k: v.ladder[min(i, len(v.ladder) - 1)] for k, v in variables.items()}
    for key, var in variables.items():
        for size in var.ladder[1:]:
            yield {**{k: v.ladder[0] for k, v in variables.items()}, key: size}


def _describe(
    notes: list[str], variables: dict[tuple, _Var], values: dict[tuple, int], trials: int, checked: bool
) -> None:
    searched = [f"{v.label}={values[k]}" for k, v in variables.items() if v.kind != "batch"]
    batch = [f"{v.label}={values[k]}" for k, v in variables.items() if v.kind == "batch"]
    parts = []
    if batch:
        parts.append(f"batch {', '.join(batch)}")
    if searched:
        parts.append(f"searched {', '.join(searched)}")
    if parts:
        how = f"onnxruntime ran the model on try {trials}" if checked else "not run to check"
        notes.append(f"dynamic dims chosen: {'; '.join(parts)} ({how})")


def _nothing_runs(
    specs: list, variables: dict[tuple, _Var], tried: list[dict[str, tuple[int, ...]]], error: str | None
) -> str:
    free = [name for v in variables.values() if v.kind != "batch" for name, _ in v.places]
    name = (
        free[0]
        if free
        else next((s.name for s in specs if np.issubdtype(s.dtype, np.integer)), specs[0].name if specs else "?")
    )
    spec = next((s for s in specs if s.name == name), None)
    declared = (
        "[" + ", ".join("?" if d is None else str(d) for d in spec.shape) + "]"
        if spec is not None and spec.shape is not None
        else "?"
    )
    example = "x".join(str(d) for d in tried[0][name]) if tried and name in tried[0] else "DIMS"
    shapes = ", ".join(sorted({"x".join(map(str, t[name])) for t in tried if name in t}))[:200]
    return (
        f"the model does not run on synthetic inputs: input {name!r} {declared} tried as {shapes or 'declared'} "
        f"({len(tried)} tries); onnxruntime: {error or 'no error text'}; give the real shape with "
        f"--input-shape {name}={example} or real inputs with --data"
    )
