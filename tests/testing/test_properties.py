"""Property-based tests (issue 8, part 3) with hypothesis, over random small graphs of common ops.

- Every built-in method, with random VALID options drawn from each Option's type, choices, min and max
  (so a method added later is covered without touching this file), passes the conformance kit on every
  random graph: onnx.checker accepts the output (strict shape inference when the input passes it),
  onnxruntime loads and runs it, the names, element types and ranks of the graph inputs and outputs are
  kept, and two runs with the same seed give byte-identical models.
- Differential checks against ``onnx.reference.ReferenceEvaluator`` (the ONNX specification in numpy):
  each random graph, and each method's output, computes under onnxruntime what the reference computes.
- tidy_model keeps what a graph computes while it drops dead nodes and sorts shuffled ones.
- save_model then load_model gives back the same model, with and without external data.

Runs are derandomized (the same examples every time) with few examples; ``make test-slow`` runs the
``slow`` variants with many more.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, assume, event, given, note, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun
from onnx.reference.ops.op_batch_normalization import _batchnorm_test_mode
from onnx.reference.ops.op_dequantize_linear import _CommonDequantizeLinear

from onnxshrink.errors import UsageError
from onnxshrink.ir.io import load_model, save_model
from onnxshrink.ir.walk import op_histogram
from onnxshrink.plugin.method import Method, Option
from onnxshrink.plugin.registry import load_registry
from onnxshrink.run.pipeline import PreparedStep, run_steps
from onnxshrink.testing import ConformanceError, check_method, run_method, synthetic_feeds
from onnxshrink.toolkit.runtime import cpu_session
from onnxshrink.toolkit.tidy import tidy_model

REGISTRY = load_registry()
BUILTINS = sorted(name for name, info in REGISTRY.methods.items() if info.builtin)

FAST = settings(
    max_examples=12,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)
THOROUGH = settings(FAST, max_examples=150)

# ------------------------------------------------------------------------------------------------
# Random graphs

OPSETS = (11, 13, 17, 21)
ACTIVATIONS = ("Relu", "Sigmoid", "Tanh", "LeakyRelu", "Abs", "Neg", "Identity")
DENSE_LAYERS = (
    "matmul",
    "matmul_bias",
    "gemm",
    "gemm_transposed",
    "shared",
    "constant_weight",
    "activation",
    "softmax",
    "layernorm",
    "scale",
    "concat",
    "residual",
)
HALF_LAYERS = ("matmul", "matmul_bias", "activation", "residual")  # what onnxruntime's CPU EP runs in float16
VISION_LAYERS = ("conv", "conv_bias", "conv_bn", "depthwise", "pool", "activation", "residual")


@dataclass
class GraphBuilder:
    """Appends nodes to a graph; weights come from a seeded generator (hypothesis shrinks structure, not numbers)."""

    rng: np.random.Generator
    opset: int
    dtype: int = TensorProto.FLOAT
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    initializers: list[onnx.TensorProto] = field(default_factory=list)
    count: int = 0

    def fresh(self, base: str) -> str:
        self.count += 1
        return f"{base}{self.count}"

    def weight(self, base: str, *shape: int, scale: float | None = None) -> str:
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        values = self.rng.standard_normal(shape) * (scale if scale is not None else 1.0 / np.sqrt(fan_in))
        name = self.fresh(base)
        self.initializers.append(
            numpy_helper.from_array(values.astype(helper.tensor_dtype_to_np_dtype(self.dtype)), name)
        )
        return name

    def node(self, op: str, inputs: list[str], **attrs: Any) -> str:
        out = self.fresh(op.lower() + "_out")
        self.nodes.append(helper.make_node(op, inputs, [out], name=self.fresh(op.lower()), **attrs))
        return out

    def activation(self, draw, x: str) -> str:
        """A random activation of ``x`` (Relu only in float16, what the CPU EP runs)."""
        if self.dtype == TensorProto.FLOAT16:
            return self.node("Relu", [x])
        op = draw(st.sampled_from(ACTIVATIONS))
        return self.node(op, [x], alpha=0.1) if op == "LeakyRelu" else self.node(op, [x])


@st.composite
def small_graphs(draw) -> onnx.ModelProto:
    """A vision stem (Conv, BatchNormalization, pooling, residual) or a feature vector, then dense layers
    (MatMul, Gemm, shared and Constant-node weights, LayerNormalization, Softmax, Concat, residual),
    opset 11 to 21, fixed or dynamic batch, float32 or (dense only) float16."""
    opset = draw(st.sampled_from(OPSETS))
    vision = draw(st.booleans())
    half = not vision and draw(st.integers(0, 5)) == 0
    batch = draw(st.sampled_from(["batch", 1, 2]))
    b = GraphBuilder(
        np.random.default_rng(draw(st.integers(0, 2**16))), opset, TensorProto.FLOAT16 if half else TensorProto.FLOAT
    )
    outputs: list[tuple[str, list]] = []
    if vision:
        channels, size = draw(st.integers(1, 4)), draw(st.integers(3, 6))
        inputs = [helper.make_tensor_value_info("input", b.dtype, [batch, channels, size, size])]
        x = "input"
        for kind in draw(st.lists(st.sampled_from(VISION_LAYERS), min_size=1, max_size=4)):
            x, channels, size = _vision_layer(draw, b, kind, x, channels, size)
        if draw(st.booleans()):
            outputs.append((x, [batch, channels, size, size]))
        x = b.node("Flatten", [b.node("GlobalAveragePool", [x])], axis=1)
        features = channels
    else:
        features = draw(st.integers(2, 48))
        inputs = [helper.make_tensor_value_info("input", b.dtype, [batch, features])]
        x = "input"
    history = [(x, features)]
    for kind in draw(st.lists(st.sampled_from(HALF_LAYERS if half else DENSE_LAYERS), min_size=1, max_size=5)):
        x, features = _dense_layer(draw, b, kind, x, features, history)
        history.append((x, features))
    outputs.append((x, [batch, features]))
    graph = helper.make_graph(
        b.nodes, "random", inputs, [helper.make_tensor_value_info(n, b.dtype, s) for n, s in outputs], b.initializers
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="onnxshrink-properties"
    )
    model.ir_version = 8 if opset < 21 else 10
    return model


def _vision_layer(draw, b: GraphBuilder, kind: str, x: str, channels: int, size: int) -> tuple[str, int, int]:
    if kind in ("conv", "conv_bias", "conv_bn"):
        out, k = draw(st.integers(1, 16)), draw(st.sampled_from([1, 3]))
        inputs = [x, b.weight("conv_w", out, channels, k, k)] + (
            [b.weight("conv_b", out, scale=0.1)] if kind == "conv_bias" else []
        )
        x = b.node("Conv", inputs, pads=[k // 2] * 4, kernel_shape=[k, k])
        if kind == "conv_bn":
            scale, bias, mean = (b.weight("bn", out, scale=0.1) for _ in range(3))
            var = b.fresh("bn_var")
            b.initializers.append(numpy_helper.from_array((b.rng.random(out) + 0.5).astype(np.float32), var))
            x = b.node("BatchNormalization", [x, scale, bias, mean, var], epsilon=1e-5)
        return x, out, size
    if kind == "depthwise":
        return (
            b.node(
                "Conv", [x, b.weight("dw_w", channels, 1, 3, 3)], group=channels, pads=[1, 1, 1, 1], kernel_shape=[3, 3]
            ),
            channels,
            size,
        )
    if kind == "pool" and size > 1:
        return (
            b.node(draw(st.sampled_from(["MaxPool", "AveragePool"])), [x], kernel_shape=[2, 2], strides=[1, 1]),
            channels,
            size - 1,
        )
    if kind == "activation":
        return b.activation(draw, x), channels, size
    y = b.node("Conv", [x, b.weight("res_w", channels, channels, 3, 3)], pads=[1, 1, 1, 1], kernel_shape=[3, 3])
    return b.node("Add", [x, y]), channels, size


def _dense_layer(draw, b: GraphBuilder, kind: str, x: str, features: int, history: list) -> tuple[str, int]:
    if kind in ("matmul", "matmul_bias", "gemm", "gemm_transposed", "constant_weight"):
        out = draw(st.integers(2, 64))
        if kind == "gemm_transposed":
            return b.node("Gemm", [x, b.weight("fc_w", out, features), b.weight("fc_b", out, scale=0.1)], transB=1), out
        if kind == "gemm":
            return b.node("Gemm", [x, b.weight("fc_w", features, out)], alpha=draw(st.sampled_from([1.0, 0.5]))), out
        if kind == "constant_weight":
            name = b.fresh("const_w")
            values = (b.rng.standard_normal((features, out)) / np.sqrt(features)).astype(np.float32)
            b.nodes.append(
                helper.make_node(
                    "Constant", [], [name], name=b.fresh("constant"), value=numpy_helper.from_array(values, name)
                )
            )
            return b.node("MatMul", [x, name]), out
        y = b.node("MatMul", [x, b.weight("mm_w", features, out)])
        return (b.node("Add", [y, b.weight("mm_b", out, scale=0.1)]) if kind == "matmul_bias" else y), out
    if kind == "shared":  # one square weight read by two MatMuls
        w = b.weight("shared_w", features, features)
        return b.node("MatMul", [b.activation(draw, b.node("MatMul", [x, w])), w]), features
    if kind == "activation":
        return b.activation(draw, x), features
    if kind == "softmax":
        return b.node("Softmax", [x], axis=-1 if b.opset >= 13 else 1), features
    if kind == "layernorm" and b.opset >= 17:
        return b.node(
            "LayerNormalization",
            [x, b.weight("ln_scale", features, scale=1.0), b.weight("ln_bias", features, scale=0.1)],
            axis=-1,
            epsilon=1e-5,
        ), features
    if kind == "scale":
        return b.node("Mul", [x, b.weight("scale", features, scale=1.0)]), features
    if kind == "concat":
        earlier, width = history[draw(st.integers(0, len(history) - 1))]
        return b.node("Concat", [x, earlier], axis=1), features + width
    same = [name for name, width in history[:-1] if width == features]  # residual (or layernorm below opset 17)
    return b.node("Add", [x, draw(st.sampled_from(same)) if same else x]), features


# ------------------------------------------------------------------------------------------------
# The reference evaluator, with two gaps of onnx 1.23's filled


class BatchNormalization(OpRun):
    """Inference-mode BatchNormalization for every opset: onnx 1.23's BatchNormalization_9 (opsets 9-13)
    applies training-mode statistics when ``momentum`` takes its default (measured: 0.6% off)."""

    op_domain = ""

    def _run(
        self, x, scale, bias, mean, var, epsilon=None, momentum=None, spatial=None, training_mode=None, is_test=None
    ):  # noqa: ARG002
        return (_batchnorm_test_mode(x, scale, bias, mean, var, epsilon=1e-5 if epsilon is None else epsilon),)


class DequantizeLinear(_CommonDequantizeLinear):
    """onnx 1.23 has no reference DequantizeLinear for opsets 10-18 (only 19+); the semantics are the same."""

    op_domain = ""


def reference(model: onnx.ModelProto) -> ReferenceEvaluator:
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    return ReferenceEvaluator(model, new_ops=[BatchNormalization] + ([DequantizeLinear] if opset < 19 else []))


def tolerance(model: onnx.ModelProto) -> float:
    """Largest allowed |onnxruntime - reference| relative to the largest reference output."""
    ops = op_histogram(model)
    if "QuantizeLinear" in ops:
        return (
            5e-2  # onnxruntime fuses QDQ into integer kernels; requantizing differs by a few steps (measured <= 1.5%)
        )
    if any(v.type.tensor_type.elem_type == TensorProto.FLOAT16 for v in model.graph.output):
        return 5e-3
    return 1e-4


def assert_matches_reference(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> bool:
    """onnxruntime and the reference evaluator agree on ``model``; False when the model holds ops outside
    the ONNX domain (MatMulNBits, say), which the reference cannot run."""
    custom = [op for op in op_histogram(model) if "::" in op]
    if custom:
        note(f"differential skipped: {custom} are not ONNX ops")
        return False
    expected = reference(model).run(None, feed)
    got = cpu_session(model).run(None, feed)
    for output, e, g in zip(model.graph.output, expected, got):
        assert g.shape == e.shape and g.dtype == e.dtype, (
            f"{output.name}: onnxruntime {g.dtype}{g.shape}, reference {e.dtype}{e.shape}"
        )
        scale = float(np.max(np.abs(e.astype(np.float64)))) + 1e-6
        error = float(np.max(np.abs(g.astype(np.float64) - e.astype(np.float64)))) / scale if e.size else 0.0
        assert error <= tolerance(model), (
            f"{output.name}: onnxruntime differs from the reference by {error:.2e} of the output range"
        )
    return True


# ------------------------------------------------------------------------------------------------
# Random valid options


def option_strategy(option: Option) -> st.SearchStrategy | None:
    """Values an option accepts, from its declared type, choices and bounds; None for free-form text."""
    if option.choices is not None:
        if option.type is list:
            return st.lists(st.sampled_from(option.choices), min_size=1, unique=True)
        return st.sampled_from(option.choices)
    if option.type is bool:
        return st.booleans()
    if option.type is int:
        low = int(option.min) if option.min is not None else 0
        return st.integers(low, int(option.max) if option.max is not None else low + 256)
    if option.type is float:
        low = float(option.min) if option.min is not None else 0.0
        return st.floats(low, float(option.max) if option.max is not None else low + 10.0, allow_nan=False)
    return None  # a str or list without choices (names of nodes...): no value is valid for every model


@st.composite
def valid_options(draw, method: type[Method]) -> dict[str, Any]:
    """Up to three options given explicitly (the rest default), rejected unless the method accepts them."""
    drawable = [o for o in method.options if option_strategy(o) is not None]
    chosen = draw(st.lists(st.sampled_from(drawable), max_size=3, unique_by=lambda o: o.name)) if drawable else []
    raw = {o.name: draw(option_strategy(o)) for o in chosen}
    try:
        method.validate_options(raw)
    except UsageError:
        assume(False)
    return raw


# Built-in methods that documentedly break one conformance check for some options: method ->
# (when, the check, why). Every other check must hold.
DOCUMENTED_EXCEPTIONS = {
    "int_quant": (
        lambda values: values["mode"] == "auto",
        "deterministic",
        "mode=auto chooses a representation by measured latency, so two runs can differ (its docstring says so)",
    ),
}


def check_method_on(name: str, model: onnx.ModelProto, raw: dict[str, Any]) -> None:
    info = REGISTRY.get(name)
    note(f"{name} options {raw}")
    with contextlib.redirect_stdout(io.StringIO()):  # onnxruntime's calibrators print progress to stdout
        try:
            report = check_method(
                name, raw, graphs={"random graph": model}, models=[], require_change=False, registry=REGISTRY
            )
            event(f"{name}: {report.results[0].outcome}")
        except ConformanceError as exc:
            when, allowed, _ = DOCUMENTED_EXCEPTIONS.get(name, (lambda values: False, None, ""))
            if not (exc.check == allowed and when(info.cls.validate_options(raw))):
                raise
        candidate = onnx.ModelProto()
        candidate.CopyFrom(model)
        try:
            run_method(name, candidate, raw, registry=REGISTRY)
        except UsageError:
            return  # the method refuses this graph (the kit checked it left everything untouched)
    event(
        "differential: compared"
        if assert_matches_reference(candidate, synthetic_feeds(model, 1)[0])
        else "differential: non-ONNX ops"
    )


# ------------------------------------------------------------------------------------------------
# Properties


@FAST
@given(small_graphs())
def test_random_graphs_are_valid_and_match_the_reference(model):
    onnx.checker.check_model(model, full_check=True)
    feed = synthetic_feeds(model, 1)[0]
    assert all(out.size for out in cpu_session(model).run(None, feed))  # no empty tensors: they would test nothing
    assert assert_matches_reference(model, feed)


@pytest.mark.parametrize("name", BUILTINS)
@FAST
@given(model=small_graphs(), data=st.data())
def test_every_builtin_method_with_random_valid_options(name, model, data):
    check_method_on(name, model, data.draw(valid_options(REGISTRY.get(name).cls), label="options"))


@pytest.mark.slow
@pytest.mark.parametrize("name", BUILTINS)
@THOROUGH
@given(model=small_graphs(), data=st.data())
def test_every_builtin_method_with_random_valid_options_thoroughly(name, model, data):
    check_method_on(name, model, data.draw(valid_options(REGISTRY.get(name).cls), label="options"))


def interface(model: onnx.ModelProto) -> list[tuple]:
    stored = {t.name for t in model.graph.initializer}
    rows = []
    for kind in ("input", "output"):
        for v in getattr(model.graph, kind):
            if not (kind == "input" and v.name in stored):
                t = v.type.tensor_type
                rows.append((kind, v.name, t.elem_type, len(t.shape.dim) if t.HasField("shape") else None))
    return rows


def run_chain(model: onnx.ModelProto, chain: list[tuple[str, dict[str, Any]]], feeds) -> onnx.ModelProto | None:
    """The chain applied to a copy of ``model`` exactly as ``--plugin A --plugin B`` runs it; None when a step
    refuses."""
    steps = [PreparedStep(REGISTRY.get(name), REGISTRY.get(name).cls.validate_options(raw)) for name, raw in chain]
    out = onnx.ModelProto()
    out.CopyFrom(model)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            run_steps(out, steps, seed=0, calibration=lambda: feeds)
    except UsageError:
        return None
    return out


@st.composite
def chains(draw) -> list[tuple[str, dict[str, Any]]]:
    names = draw(st.lists(st.sampled_from(BUILTINS), min_size=2, max_size=2))
    return [(name, draw(valid_options(REGISTRY.get(name).cls), label=f"{name} options")) for name in names]


@FAST
@given(small_graphs(), chains())
def test_chains_of_two_builtin_methods(model, chain):
    """Two methods in a row (prune then store sparse, quantize then prune...): valid, same interface,
    deterministic, and onnxruntime computes what the reference computes."""
    feeds = synthetic_feeds(model, 2)
    first = run_chain(model, chain, feeds)
    if first is None:
        event("chain refused")
        return
    event(
        "chain changed the model"
        if first.SerializeToString(deterministic=True) != model.SerializeToString(deterministic=True)
        else "chain left the model as it was"
    )
    onnx.checker.check_model(first, full_check=True)
    cpu_session(first)
    assert interface(first) == interface(model)
    documented = [
        name
        for name, raw in chain
        if name in DOCUMENTED_EXCEPTIONS
        and DOCUMENTED_EXCEPTIONS[name][0](REGISTRY.get(name).cls.validate_options(raw))
    ]
    if not documented:
        second = run_chain(model, chain, feeds)
        assert second is not None and second.SerializeToString(deterministic=True) == first.SerializeToString(
            deterministic=True
        )
    assert_matches_reference(first, feeds[0])


def _parses(option: Option, where: str):
    @settings(max_examples=20, derandomize=True, database=None)
    @given(option_strategy(option))
    def legal(value):
        option.parse(value, where)

    return legal


@pytest.mark.parametrize("name", BUILTINS)
def test_option_strategies_respect_declared_bounds_and_choices(name):
    """Every drawn value is legal for its Option (so a rejected draw is a cross-option rule, never ours)."""
    drawn = [o for o in REGISTRY.get(name).cls.options if option_strategy(o) is not None]
    for option in drawn:
        _parses(option, f"plugin {name!r}")()


@st.composite
def messy_graphs(draw) -> tuple[onnx.ModelProto, onnx.ModelProto, list[str]]:
    """A random graph, a copy with dead nodes added and its nodes shuffled, and the dead node names."""
    clean = draw(small_graphs())
    model = onnx.ModelProto()
    model.CopyFrom(clean)
    nodes = list(model.graph.node)
    dead = []
    for i in range(draw(st.integers(0, 3))):
        source = draw(st.sampled_from([n.output[0] for n in nodes] + ["input"]))
        dead.append(helper.make_node("Relu", [source], [f"dead_out{i}"], name=f"dead{i}"))
    nodes += dead
    order = draw(st.permutations(range(len(nodes))))
    del model.graph.node[:]
    model.graph.node.extend(nodes[i] for i in order)
    return clean, model, [n.name for n in dead]


@FAST
@given(messy_graphs())
def test_tidy_keeps_what_the_graph_computes(case):
    clean, model, dead = case
    feed = synthetic_feeds(clean, 1)[0]
    expected = reference(clean).run(None, feed)
    tidy_model(model)
    onnx.checker.check_model(model, full_check=True)  # sorted again
    assert not {n.name for n in model.graph.node} & set(dead)
    for e, g in zip(expected, reference(model).run(None, feed)):
        np.testing.assert_array_equal(g, e)


def _normalized(model: onnx.ModelProto) -> bytes:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for g in [copy.graph]:
        for tensor in g.initializer:
            if tensor.data_location == TensorProto.DEFAULT:
                tensor.ClearField("data_location")
    return copy.SerializeToString(deterministic=True)


@FAST
@given(small_graphs(), st.booleans())
def test_save_then_load_gives_back_the_same_model(model, external):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.onnx"
        written = save_model(model, path, external_data=external)
        assert sorted(p.name for p in Path(folder).iterdir()) == sorted(p.name for p in written)
        loaded = load_model(path)
        assert loaded.uses_external_data == (external and any(len(t.raw_data) >= 1024 for t in model.graph.initializer))
        assert _normalized(loaded.model) == _normalized(model)
