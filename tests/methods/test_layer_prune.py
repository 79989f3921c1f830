"""layer_prune: residual blocks found, scored and removed on models/; no-op nodes removed."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxshrink
from onnxshrink.plugin.method import PluginSpec
from onnxshrink.run.pipeline import prepare_steps, run_steps
from onnxshrink.toolkit.runtime import run_model
from tests.support.files import MODELS


def prune(registry, model, feeds, **options):
    steps = prepare_steps([PluginSpec("layer_prune", {k: str(v) for k, v in options.items()})], registry)
    [result] = run_steps(
        model, steps, seed=0, calibration=(lambda: feeds) if feeds is not None else None, calibration_is_synthetic=False
    )
    return result.stats


def model_and_data(name: str, count: int = 32):
    return onnx.load(MODELS / f"{name}.onnx"), [{"input": np.load(MODELS / f"{name}_calib.npz")["input"][:count]}]


TRANSFORMER_BLOCKS = [
    "/blocks/blocks.0/Add",
    "/blocks/blocks.0/Add_2",
    "/blocks/blocks.1/Add",
    "/blocks/blocks.1/Add_2",
]


def test_the_least_influential_transformer_block_is_removed_and_the_model_runs(registry):
    model, calib = model_and_data("transformer")
    stats = prune(registry, model, calib)
    assert [b["add"] for b in stats["blocks"]] == TRANSFORMER_BLOCKS  # attention and MLP sub-blocks
    lowest = min(stats["blocks"], key=lambda b: b["score"])
    assert stats["removed_blocks"] == [lowest["add"]] and [b["removed"] for b in stats["blocks"]].count(True) == 1
    assert all(0 < b["score"] < 1 for b in stats["blocks"])
    names = {n.name for n in model.graph.node}
    assert lowest["add"] not in names and set(TRANSFORMER_BLOCKS) - {lowest["add"]} <= names
    assert stats["nodes_after"] < stats["nodes_before"] and stats["params_after"] < stats["params_before"]
    evaluation = np.load(MODELS / "transformer_eval.npz")
    logits = run_model(model, [{"input": evaluation["input"]}])[0]["logits"]
    assert logits.shape == (len(evaluation["labels"]), 10) and np.isfinite(logits).all()


def test_ratio_threshold_exclude_and_norm_score(registry):
    model, calib = model_and_data("transformer")
    stats = prune(registry, model, calib, ratio=0.5, exclude="[/blocks/blocks.0/Add_2]", score="norm")
    ranked = sorted((b for b in stats["blocks"] if b["add"] != "/blocks/blocks.0/Add_2"), key=lambda b: b["score"])
    assert stats["removed_blocks"] == sorted([b["add"] for b in ranked[:2]], key=TRANSFORMER_BLOCKS.index)
    model, calib = model_and_data("transformer")
    stats = prune(registry, model, calib, threshold=0.3)
    assert sorted(stats["removed_blocks"]) == sorted(b["add"] for b in stats["blocks"] if b["score"] < 0.3)


def test_only_identity_shortcuts_of_the_cnn_are_blocks(registry):
    model, calib = model_and_data("cnn")
    stats = prune(registry, model, calib, n=1)
    assert [b["add"] for b in stats["blocks"]] == [
        "/layer1/layer1.0/Add",
        "/layer1/layer1.1/Add",
        "/layer2/layer2.1/Add",
    ]
    assert run_model(model, calib)[0]["logits"].shape == (32, 10)


def test_bad_options_and_missing_data(registry):
    with pytest.raises(onnxshrink.UsageError, match="give one of n, ratio or threshold"):
        prepare_steps([PluginSpec("layer_prune", {"n": "1", "ratio": "0.5"})], registry)
    model, calib = model_and_data("transformer")
    with pytest.raises(onnxshrink.UsageError, match="no residual block ends at 'nope'"):
        prune(registry, model, calib, exclude="[nope]")
    with pytest.raises(onnxshrink.UsageError, match="needs calibration data"):
        prune(registry, model, None)


def graph_with_noops() -> onnx.ModelProto:
    """MatMul → Identity → Dropout → Cast(float) → Reshape [0, -1] → Transpose [0, 1] → Relu → Cast to
    float16 and back (not a no-op) → Identity (the graph output)."""
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 6)).astype(np.float32), "w")
    shape = numpy_helper.from_array(np.array([0, -1], np.int64), "same_shape")
    nodes = [
        helper.make_node("MatMul", ["input", "w"], ["m"], name="mm"),
        helper.make_node("Identity", ["m"], ["i1"], name="identity"),
        helper.make_node("Dropout", ["i1"], ["d"], name="dropout"),
        helper.make_node("Cast", ["d"], ["c"], name="cast_same", to=TensorProto.FLOAT),
        helper.make_node("Reshape", ["c", "same_shape"], ["r"], name="reshape_same"),
        helper.make_node("Transpose", ["r"], ["t"], name="transpose_same", perm=[0, 1]),
        helper.make_node("Relu", ["t"], ["a"], name="relu"),
        helper.make_node("Cast", ["a"], ["h"], name="to_half", to=TensorProto.FLOAT16),
        helper.make_node("Cast", ["h"], ["f"], name="to_float", to=TensorProto.FLOAT),
        helper.make_node("Identity", ["f"], ["output"], name="identity_out"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 6])],
        [w, shape],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def test_noop_nodes_are_removed_and_the_outputs_kept(registry):
    original, model = graph_with_noops(), graph_with_noops()
    stats = prune(registry, model, None, n=0)
    assert stats["removed_blocks"] == [] and stats["noop_removed"] == {
        "Cast": 1,
        "Dropout": 1,
        "Identity": 2,
        "Reshape": 1,
        "Transpose": 1,
    }
    assert [n.op_type for n in model.graph.node] == ["MatMul", "Relu", "Cast", "Cast"]
    assert model.graph.node[-1].output[0] == "output"
    feeds = [{"input": np.random.default_rng(1).standard_normal((3, 4)).astype(np.float32)}]
    np.testing.assert_array_equal(run_model(model, feeds)[0]["output"], run_model(original, feeds)[0]["output"])
    kept = graph_with_noops()
    assert prune(registry, kept, None, n=0, noop="false")["noop_removed"] == {} and len(kept.graph.node) == 10
