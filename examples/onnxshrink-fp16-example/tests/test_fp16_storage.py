"""fp16_storage: conformance, the exact numbers it promises, onnxruntime folding, and the real CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxshrink
from onnxshrink.testing import REFERENCE_GRAPHS, check_method, run_method, shipped_models, synthetic_feeds
from onnxshrink_fp16_example import Fp16Storage


def outputs(model, feeds):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return [session.run(None, feed) for feed in feeds]


def test_passes_the_conformance_kit():
    report = check_method(Fp16Storage)
    for graph in ("shared_weight", "constant_node_weights", "if_subgraph", "loop_subgraph", "dynamic_dims"):
        assert report.outcomes[f"graph {graph!r}"] == "changed", report
    assert "stored as float16, not float32" in report.skipped["graph 'fp16_mlp'"]
    assert "graph input" in report.skipped["graph 'initializer_as_input'"]


def test_outputs_equal_the_model_with_float16_rounded_weights():
    model = REFERENCE_GRAPHS["conv_bn_residual"]()
    rounded = onnx.ModelProto()
    rounded.CopyFrom(model)
    for weight in onnxshrink.weight_tensors(rounded):
        weight.set_array(weight.array().astype(np.float16).astype(np.float32))

    result = run_method(Fp16Storage, model)

    assert result.stats["converted_tensors"] == 4 and result.stats["skipped"] == []
    assert result.stats["max_relative_error"] < 5e-4
    stored = {t.name: t for t in model.graph.initializer if t.name.endswith("_fp16")}
    assert len(stored) == 4 and all(t.data_type == TensorProto.FLOAT16 for t in stored.values())
    feeds = synthetic_feeds(model, 3)
    for got, expected in zip(outputs(model, feeds), outputs(rounded, feeds)):
        np.testing.assert_array_equal(got[0], expected[0])  # the Cast restores exactly the rounded values


def optimized(model, path):
    """The graph onnxruntime runs after its load-time optimizations (constant folding included)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(path)
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return onnx.load(path)


def test_onnxruntime_folds_the_cast_at_load(tmp_path):
    original = REFERENCE_GRAPHS["mlp"]()
    model = REFERENCE_GRAPHS["mlp"]()
    run_method(Fp16Storage, model)
    assert sum(n.op_type == "Cast" for n in model.graph.node) == 2

    runs, baseline = optimized(model, tmp_path / "fp16.onnx"), optimized(original, tmp_path / "float.onnx")
    assert [n.op_type for n in runs.graph.node] == [n.op_type for n in baseline.graph.node]
    assert "Cast" not in {n.op_type for n in runs.graph.node}
    assert {t.name: t.data_type for t in runs.graph.initializer} == {t.name: t.data_type for t in baseline.graph.initializer}


def test_shared_weight_is_converted_once():
    model = REFERENCE_GRAPHS["shared_weight"]()
    result = run_method(Fp16Storage, model)
    assert result.stats["converted_tensors"] == 1
    assert [n.op_type for n in model.graph.node].count("Cast") == 1
    assert [n.input[1] for n in model.graph.node if n.op_type == "MatMul"] == ["W", "W"]


def test_tensors_it_cannot_store_exactly_enough_are_left_float32_with_reasons():
    rng = np.random.default_rng(0)
    weights = {
        "huge": (rng.standard_normal((16, 16)) * 1e5).astype(np.float32),  # beyond float16's 65504
        "tiny": (rng.standard_normal((16, 16)) * 1e-7).astype(np.float32),  # float16 subnormals: large error
        "small": rng.standard_normal((16, 2)).astype(np.float32),  # 32 elements < min_size 64
        "kept": rng.standard_normal((16, 16)).astype(np.float32),
        "fine": rng.standard_normal((16, 16)).astype(np.float32),
    }
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", name], [f"{name}_out"], name=name) for name in weights],
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info(f"{n}_out", TensorProto.FLOAT, ["batch", a.shape[1]]) for n, a in weights.items()],
        [numpy_helper.from_array(a, n) for n, a in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8

    result = run_method(Fp16Storage, model, {"keep": "[kept]"})

    reasons = {s["name"]: s["reason"] for s in result.stats["skipped"]}
    assert reasons["huge"].startswith("values beyond float16's range")
    assert reasons["tiny"].startswith("relative error") and "> max_error 0.001" in reasons["tiny"]
    assert reasons["small"] == "32 elements < min_size 64"
    assert reasons["kept"] == "listed in keep"
    assert [t["name"] for t in result.stats["tensors"]] == ["fine"]
    left = {t.name: t.data_type for t in model.graph.initializer}
    assert left["huge"] == left["tiny"] == left["small"] == left["kept"] == TensorProto.FLOAT
    assert left["fine_fp16"] == TensorProto.FLOAT16


def test_bad_option_is_a_usage_error():
    with pytest.raises(onnxshrink.UsageError, match=r"plugin 'fp16_storage': option 'max_error' must be .* \(got -1.0\)"):
        Fp16Storage.validate_options({"max_error": "-1"})


def test_the_cli_halves_a_model_and_keeps_its_predictions(tmp_path):
    shipped = {p.name: p for p in shipped_models()}
    if "cnn.onnx" in shipped:
        source = shipped["cnn.onnx"]
        with np.load(source.with_name("cnn_eval.npz")) as data:
            inputs = data["input"][:64]
    else:  # an installed onnxshrink without the repository's models/: a reference graph
        source = tmp_path / "conv.onnx"
        onnx.save(REFERENCE_GRAPHS["conv_bn_residual"](), source)
        inputs = synthetic_feeds(onnx.load(source), 1, dynamic=16)[0]["input"]
    before = source.read_bytes()
    out, report = tmp_path / "small.onnx", tmp_path / "report.json"
    cli = Path(sys.executable).with_name("onnxshrink")

    proc = subprocess.run(
        [cli, source, "--plugin", "fp16_storage", "-o", out, "--report", report, "--no-validate", "--quiet"],
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert proc.returncode == 0, proc.stderr
    assert source.read_bytes() == before
    [step] = json.loads(report.read_text())["steps"]
    assert step["plugin"] == "fp16_storage" and step["stats"]["converted_tensors"] > 0
    stats = step["stats"]
    overhead = (stats["weight_bytes_before"] - stats["weight_bytes_after"]) - (len(before) - out.stat().st_size)
    assert 0 <= overhead < 200 * stats["converted_tensors"]  # each tensor's Cast node and new names
    [expected], [got] = outputs(onnx.load(source), [{"input": inputs}]), outputs(onnx.load(out), [{"input": inputs}])
    assert np.array_equal(expected[0].argmax(axis=-1), got[0].argmax(axis=-1))
    cosine = float(np.sum(expected[0] * got[0]) / (np.linalg.norm(expected[0]) * np.linalg.norm(got[0])))
    assert cosine > 0.99999
