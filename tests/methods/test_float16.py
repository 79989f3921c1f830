"""float16: every float32 constant stored as float16 + a Cast onnxruntime folds at load."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxshrink
from onnxshrink.testing import REFERENCE_GRAPHS, run_method
from onnxshrink_plugins.float16 import Float16
from tests.support.cli import assert_one_line_error

MODELS = ["cnn", "mlp", "transformer"]
MODELS_DIR = Path(__file__).resolve().parents[2] / "models"


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def mixed_graph() -> onnx.ModelProto:
    """A Conv weight, a Mul constant, a tensor beyond float16's range, an initializer that is also a graph
    input, a tiny tensor under min_size and a Constant node read inside an If branch."""
    rng = np.random.default_rng(0)
    conv_w = rng.standard_normal((4, 2, 3, 3)).astype(np.float32)
    scale = rng.uniform(0.5, 1.5, (1, 4, 1, 1)).astype(np.float32)
    scale = np.broadcast_to(scale, (1, 4, 4, 4)).copy()  # 64 elements
    huge = np.full((1, 4, 4, 4), 1e-6, dtype=np.float32)
    huge[0, 0, 0, 0] = 1e5  # beyond 65504
    bias_in = rng.standard_normal((1, 4, 4, 4)).astype(np.float32)  # also a graph input
    tiny = np.array([0.5, 1.5, 2.5], dtype=np.float32).reshape(1, 3, 1, 1)[:, :1]  # 1 element < 16
    branch_const = rng.standard_normal((1, 4, 4, 4)).astype(np.float32)
    then_graph = helper.make_graph(
        [
            helper.make_node("Constant", [], ["k"], name="then_const", value=numpy_helper.from_array(branch_const)),
            helper.make_node("Add", ["m", "k"], ["t"], name="then_add"),
        ],
        "then_branch",
        [],
        [helper.make_tensor_value_info("t", TensorProto.FLOAT, None)],
    )
    else_graph = helper.make_graph(
        [helper.make_node("Identity", ["m"], ["e"], name="else_id")],
        "else_branch",
        [],
        [helper.make_tensor_value_info("e", TensorProto.FLOAT, None)],
    )
    nodes = [
        helper.make_node("Conv", ["input", "conv_w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Mul", ["c", "scale"], ["s"], name="mul"),
        helper.make_node("Add", ["s", "huge"], ["h"], name="add_huge"),
        helper.make_node("Add", ["h", "bias_in"], ["b"], name="add_bias"),
        helper.make_node("Mul", ["b", "tiny"], ["m"], name="mul_tiny"),
        helper.make_node("ReduceSum", ["input"], ["total"], name="sum", keepdims=0),
        helper.make_node("Greater", ["total", "zero"], ["cond"], name="cond"),
        helper.make_node("If", ["cond"], ["output"], name="branch", then_branch=then_graph, else_branch=else_graph),
    ]
    inits = [
        numpy_helper.from_array(conv_w, "conv_w"),
        numpy_helper.from_array(scale, "scale"),
        numpy_helper.from_array(huge, "huge"),
        numpy_helper.from_array(bias_in, "bias_in"),
        numpy_helper.from_array(tiny.reshape(1, 1, 1, 1), "tiny"),
        numpy_helper.from_array(np.array(-1e9, dtype=np.float32), "zero"),
    ]
    graph = helper.make_graph(
        nodes,
        "mixed",
        [
            helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 2, 4, 4]),
            helper.make_tensor_value_info("bias_in", TensorProto.FLOAT, [1, 4, 4, 4]),
        ],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 4, 4, 4])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def rounded(model: onnx.ModelProto, names: set[str]) -> onnx.ModelProto:
    """A copy whose named float32 tensors (Constant values and subgraphs too) hold float16-rounded values."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for tensor in onnxshrink.iter_tensors(copy.graph):
        if tensor.name in names or (not tensor.name and names & {"then_const"}):
            values = numpy_helper.to_array(tensor).astype(np.float16).astype(np.float32)
            tensor.CopyFrom(numpy_helper.from_array(values, tensor.name))
    return copy


def dtypes(model: onnx.ModelProto) -> dict[str, int]:
    return {t.name: t.data_type for g, _ in onnxshrink.iter_graphs(model.graph) for t in g.initializer}


def test_converts_what_fits_and_leaves_the_rest_float32_with_reasons():
    original = mixed_graph()
    model = mixed_graph()
    result = run_method(Float16, model)
    stats = result.stats

    assert sorted(t["tensor"] for t in stats["tensors"]) == ["conv_w", "k", "scale"]
    reasons = {e["tensor"]: e["reason"] for e in stats["left"]}
    assert reasons["huge"] == "values beyond float16's range"
    assert reasons["bias_in"].startswith("also a graph input")
    assert reasons["tiny"] == "fewer than min_size (16) elements"
    assert stats["left_reasons"]["values beyond float16's range"] == 1
    assert any("beyond float16's range" in w for w in result.warnings)
    assert stats["converted_tensors"] == 3 and stats["left_tensors"] == len(stats["left"])
    assert stats["bytes_before"] == 4 * (72 + 64 + 64) and stats["bytes_after"] == stats["bytes_before"] // 2
    assert 0 < stats["max_abs_error"] < 1e-3

    types = dtypes(model)
    assert types["huge"] == types["bias_in"] == types["tiny"] == TensorProto.FLOAT
    assert types["conv_w_float16"] == types["scale_float16"] == TensorProto.FLOAT16
    branch = next(n for n in model.graph.node if n.op_type == "If")
    then_graph = next(a.g for a in branch.attribute if a.name == "then_branch")
    assert [n.op_type for n in then_graph.node] == ["Cast", "Add"]
    assert [t.data_type for t in then_graph.initializer] == [TensorProto.FLOAT16]
    assert [n.op_type for n in model.graph.node].count("Cast") == 2

    # outputs equal the float model with those tensors rounded; close to the float model
    feeds = {"input": np.random.default_rng(1).standard_normal((3, 2, 4, 4)).astype(np.float32)}
    got = session(model).run(None, feeds)[0]
    expected = session(rounded(original, {"conv_w", "scale", "then_const"})).run(None, feeds)[0]
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got, session(original).run(None, feeds)[0], rtol=1e-2, atol=1e-2)


def test_min_size_and_exclude():
    model = mixed_graph()
    stats = run_method(Float16, model, {"min_size": "0", "exclude": "[mul, conv_w]"}).stats
    converted = sorted(t["tensor"] for t in stats["tensors"])
    assert converted == ["k", "tiny"]  # "zero" (-1e9) is beyond float16's range
    reasons = {e["tensor"]: e["reason"] for e in stats["left"]}
    assert reasons["scale"] == reasons["conv_w"] == "excluded (exclude=)"


def test_exclude_by_op_type():
    stats = run_method(Float16, mixed_graph(), {"exclude": "[Conv]"}).stats
    assert sorted(t["tensor"] for t in stats["tensors"]) == ["k", "scale"]


def optimized(model: onnx.ModelProto, path) -> onnx.ModelProto:
    """The graph onnxruntime runs after its load-time optimizations (constant folding included)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(path)
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return onnx.load(str(path))


@pytest.mark.parametrize("name", MODELS)
def test_digits_models_half_the_weights_same_predictions_cast_folded(name, tmp_path):
    path = MODELS_DIR / f"{name}.onnx"
    original = onnx.load(str(path))
    model = onnx.load(str(path))
    stats = run_method(Float16, model).stats
    assert stats["converted_tensors"] > 0 and stats["bytes_after"] * 2 == stats["bytes_before"]
    assert len(model.SerializeToString()) < 0.6 * len(original.SerializeToString())

    with np.load(path.with_name(f"{name}_eval.npz")) as data:
        feeds = {"input": data["input"][:64]}
    expected, got = session(original).run(None, feeds)[0], session(model).run(None, feeds)[0]
    assert np.array_equal(expected.argmax(-1), got.argmax(-1))
    cosine = float(np.sum(expected * got) / (np.linalg.norm(expected) * np.linalg.norm(got)))
    assert cosine > 0.9999

    runs = optimized(model, tmp_path / "fp16.onnx")
    baseline = optimized(original, tmp_path / "float.onnx")
    assert "Cast" not in {n.op_type for g, _ in onnxshrink.iter_graphs(runs.graph) for n in g.node}
    assert [n.op_type for n in runs.graph.node] == [n.op_type for n in baseline.graph.node]
    assert all(t.data_type != TensorProto.FLOAT16 for t in runs.graph.initializer)


def test_cast_in_an_if_branch_is_folded_too(tmp_path):
    model = mixed_graph()
    run_method(Float16, model)
    runs = optimized(model, tmp_path / "fp16.onnx")
    assert "Cast" not in {n.op_type for g, _ in onnxshrink.iter_graphs(runs.graph) for n in g.node}


def test_deterministic_bytes_and_idempotent():
    first, second = mixed_graph(), mixed_graph()
    run_method(Float16, first)
    run_method(Float16, second)
    assert first.SerializeToString() == second.SerializeToString()
    again = run_method(Float16, first)
    assert again.stats["converted_tensors"] == 0
    assert {e["reason"] for e in again.stats["left"]} >= {"already float16, not float32"}


def test_already_quantized_model_is_left_alone():
    model = REFERENCE_GRAPHS["qdq_quantized"]()
    before = model.SerializeToString()
    result = run_method(Float16, model)
    assert result.stats["converted_tensors"] == 0 and result.stats["already_quantized"]
    assert model.SerializeToString() == before


@pytest.mark.parametrize(
    "option, message",
    [
        ("min_size=-1", "min_size"),
        ("min_size=many", "min_size"),
        ("exclude=[no_such_node]", "no_such_node"),
        ("bits=8", "bits"),
    ],
)
def test_bad_option_is_a_one_line_exit_2(cli, tmp_path, option, message):
    source = MODELS_DIR / "mlp.onnx"
    before = source.read_bytes()
    out = tmp_path / "out.onnx"
    result = cli(source, "--plugin", f"float16:{option}", "-o", out, "--no-validate")
    assert_one_line_error(result, 2, "float16", message)
    assert not out.exists() and source.read_bytes() == before


def test_the_cli_writes_a_smaller_model_and_reports_the_stats(cli, tmp_path):
    source = MODELS_DIR / "cnn.onnx"
    out, report = tmp_path / "small.onnx", tmp_path / "report.json"
    result = cli(source, "--plugin", "float16", "-o", out, "--report", report, "--no-validate", "--quiet")
    assert result.exit_code == 0, result
    [step] = json.loads(report.read_text())["steps"]
    assert step["plugin"] == "float16" and step["stats"]["converted_tensors"] > 0
    assert out.stat().st_size < 0.6 * source.stat().st_size


def test_tune_searches_its_min_size(registry):
    """tune tries float16 at each declared min_size; given options, it is a fixed point."""
    from onnxshrink.plugin.method import PluginSpec
    from onnxshrink.tune.space import build_space

    space = build_space(registry)
    assert space.methods["float16"].tunables["min_size"].choices == (16, 128, 1024)
    assert {"chain": "float16+int_pack+short_names", "float16.min_size": 16} in space.start_points()
    fixed = build_space(registry, [PluginSpec("float16", {"min_size": "16"})])
    assert fixed.chains == [("float16",)] and fixed.methods["float16"].fixed == {"min_size": 16}
