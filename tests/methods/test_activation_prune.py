"""activation_prune: dead channels found on calibration data are removed without changing the outputs."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxshrink
from onnxshrink.plugin.method import PluginSpec
from onnxshrink.plugin.registry import load_registry
from onnxshrink.run.pipeline import prepare_steps, run_steps
from onnxshrink.toolkit.runtime import run_model
from tests.support.files import MODELS


def prune(registry, model, feeds, **options):
    steps = prepare_steps([PluginSpec("activation_prune", {k: str(v) for k, v in options.items()})], registry)
    [result] = run_steps(
        model, steps, seed=0, calibration=(lambda: feeds) if feeds is not None else None, calibration_is_synthetic=False
    )
    return result.stats


def copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def assert_same_outputs(a, b, feeds, atol=1e-5):
    for out_a, out_b in zip(run_model(a, feeds), run_model(b, feeds)):
        for name in out_a:
            np.testing.assert_allclose(out_b[name], out_a[name], rtol=1e-5, atol=atol, err_msg=name)


def cnn_with_dead_filters() -> onnx.ModelProto:
    """Conv whose filters 2 and 5 have a bias of -100 (dead after the Relu) → Conv → Relu → GAP → Gemm."""
    rng = np.random.default_rng(0)
    bias = (0.1 * rng.standard_normal(8)).astype(np.float32)
    bias[[2, 5]] = -100
    inits = [
        numpy_helper.from_array((0.3 * rng.standard_normal((8, 3, 3, 3))).astype(np.float32), "w1"),
        numpy_helper.from_array(bias, "b1"),
        numpy_helper.from_array((0.3 * rng.standard_normal((6, 8, 3, 3))).astype(np.float32), "w2"),
        numpy_helper.from_array((0.3 * rng.standard_normal((4, 6))).astype(np.float32), "fc"),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc"], ["logits"], name="head", transB=1),
    ]
    return _model(nodes, inits, ["batch", 3, 6, 6])


def mlp_with_constant_neuron() -> onnx.ModelProto:
    """Gemm (8 → 6) → Relu → MatMul + Add: neuron 4 always outputs 0.05 (zero weights, bias 0.05),
    neuron 5 is dead (bias -100), the others are alive (bias +2)."""
    rng = np.random.default_rng(1)
    w1 = (0.3 * rng.standard_normal((6, 8))).astype(np.float32)
    w1[4] = 0
    b1 = np.array([2, 2, 2, 2, 0.05, -100], np.float32)
    inits = [
        numpy_helper.from_array(w1, "w1"),
        numpy_helper.from_array(b1, "b1"),
        numpy_helper.from_array(rng.standard_normal((6, 3)).astype(np.float32), "w2"),
        numpy_helper.from_array(rng.standard_normal(3).astype(np.float32), "b2"),
    ]
    nodes = [
        helper.make_node("Gemm", ["input", "w1", "b1"], ["h"], name="fc1", transB=1),
        helper.make_node("Relu", ["h"], ["a"], name="relu"),
        helper.make_node("MatMul", ["a", "w2"], ["m"], name="fc2"),
        helper.make_node("Add", ["m", "b2"], ["logits"], name="fc2_bias"),
    ]
    return _model(nodes, inits, ["batch", 8])


def _model(nodes, inits, input_shape) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, input_shape)],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    model.graph.output[0].CopyFrom(onnx.shape_inference.infer_shapes(model).graph.output[0])
    onnx.checker.check_model(model, full_check=True)
    return model


def random_feeds(shape, seed=0):
    return [{"input": np.random.default_rng(seed).random(shape).astype(np.float32)}]


def test_dead_filters_are_removed_and_the_outputs_do_not_change():
    registry = load_registry()
    original = cnn_with_dead_filters()
    model = copy(original)
    feeds = random_feeds((16, 3, 6, 6))
    stats = prune(registry, model, feeds)
    assert stats["groups"][0] == {"id": "conv1", "channels": 8, "removed": 2, "dead": 2}
    assert stats["channels_removed"] == sum(g["dead"] for g in stats["groups"])  # conv2 may have dead ones too
    assert stats["params_after"] < stats["params_before"]
    w1 = next(t for t in model.graph.initializer if t.name == "w1")
    assert list(w1.dims) == [6, 3, 3, 3]
    assert_same_outputs(original, model, feeds)


def test_constant_channels_go_with_their_mean_folded_into_the_next_bias(registry):
    original = mlp_with_constant_neuron()
    feeds = random_feeds((32, 8), seed=3)
    folded, unfolded = copy(original), copy(original)
    stats = prune(registry, folded, feeds, threshold=0.06)
    assert stats["groups"] == [{"id": "fc1", "channels": 6, "removed": 2, "dead": 2}]
    assert_same_outputs(original, folded, feeds)  # exact: the removed neuron was constant
    prune(registry, unfolded, feeds, threshold=0.06, fold="false")
    gap = np.abs(run_model(original, feeds)[0]["logits"] - run_model(unfolded, feeds)[0]["logits"]).max()
    assert gap > 1e-3  # without the fold, its constant contribution is lost


def test_dead_neurons_of_the_mlp_in_models(registry):
    original = onnx.load(MODELS / "mlp.onnx")
    model = copy(original)
    calib = [{"input": np.load(MODELS / "mlp_calib.npz")["input"]}]
    stats = prune(registry, model, calib)
    assert stats["channels_removed"] == sum(g["dead"] for g in stats["groups"]) > 0
    assert_same_outputs(original, model, calib)


def test_ratio_removes_the_quietest_channels_and_whole_attention_heads(registry):
    model = onnx.load(MODELS / "transformer.onnx")
    calib = [{"input": np.load(MODELS / "transformer_calib.npz")["input"][:32]}]
    stats = prune(registry, copy(model), calib, ratio=0.25)
    assert [g["removed"] for g in stats["groups"]] == [32, 32]  # the MLP hidden layers, read after GELU
    assert all("not read after a ReLU-like op" in s["reason"] for s in stats["skipped"]) and len(stats["skipped"]) == 2
    pruned = copy(model)
    stats = prune(registry, pruned, calib, ratio=0.25, after="any", reconstruct="true")
    assert [g["removed"] for g in stats["groups"]] == [16, 32, 16, 32]  # one head of 16 per attention block
    assert run_model(pruned, calib)[0]["logits"].shape == (32, 10)


def test_calibration_data_is_required_and_options_are_checked(registry):
    with pytest.raises(onnxshrink.UsageError, match="needs calibration data"):
        prune(registry, mlp_with_constant_neuron(), None)
    with pytest.raises(onnxshrink.UsageError, match="either threshold or ratio"):
        prepare_steps([PluginSpec("activation_prune", {"threshold": "0.1", "ratio": "0.2"})], registry)
