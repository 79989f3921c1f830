"""int_pack: int8 tensors stored in fewer bits plus exceptions; outputs bit-identical, folded at load."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxshrink.testing import check_method, run_method
from onnxshrink_plugins.int_pack import IntPack
from tests.support.cli import assert_one_line_error
from tests.support.files import MODELS


def int8_matmul(rows: int = 256, cols: int = 64, seed: int = 0, as_input: bool = False) -> onnx.ModelProto:
    """x[1, rows] @ (int8 weight, mostly within ±20 with a few outliers up to ±127, cast to float)."""
    rng = np.random.default_rng(seed)
    codes = np.clip(np.round(rng.normal(0, 6, (rows, cols))), -127, 127).astype(np.int8)
    codes.flat[rng.choice(codes.size, 40, replace=False)] = rng.choice([-127, -90, 100, 127], 40)
    weight = numpy_helper.from_array(codes, "w_codes")
    nodes = [
        helper.make_node("Cast", ["w_codes"], ["w"], to=TensorProto.FLOAT),
        helper.make_node("MatMul", ["x", "w"], ["y"]),
    ]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, rows])]
    if as_input:
        inputs.append(helper.make_tensor_value_info("w_codes", TensorProto.INT8, [rows, cols]))
    graph = helper.make_graph(
        nodes, "int8_matmul", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, cols])], [weight]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _run(model: onnx.ModelProto, feed: dict[str, np.ndarray], optimized: Path | None = None) -> np.ndarray:
    options = ort.SessionOptions()
    if optimized is not None:
        options.optimized_model_filepath = str(optimized)
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feed)[0]


def test_packs_in_fewer_bits_with_exceptions_and_outputs_are_bit_identical(tmp_path):
    model = int8_matmul()
    feed = {"x": np.random.default_rng(1).normal(size=(1, 256)).astype(np.float32)}
    expected = _run(model, feed)
    before = model.ByteSize()
    result = run_method(IntPack, model)
    [tensor] = result.stats["tensors"]
    assert tensor["tensor"] == "w_codes" and 5 <= tensor["bits"] <= 7 and tensor["exceptions"] >= 1
    assert model.ByteSize() < 0.9 * before
    assert {n.op_type for n in model.graph.node} >= {"ScatterElements", "Reshape"}
    assert np.array_equal(_run(model, feed, tmp_path / "optimized.onnx"), expected)
    # onnxruntime folds the unpack chain back into the int8 tensor: nothing of it is left to run
    optimized = onnx.load(tmp_path / "optimized.onnx")
    assert {n.op_type for n in optimized.graph.node}.isdisjoint({"ScatterElements", "BitShift", "CumSum"})


def test_after_per_tensor_int8_it_shrinks_the_file_and_keeps_the_outputs():
    model = onnx.load(MODELS / "mlp.onnx")
    run_method("int_quant", model, {"mode": "storage", "per_channel": "false"})
    data = np.load(MODELS / "mlp_eval.npz")
    feed = {k: data[k][:8] for k in data.files if k in {i.name for i in model.graph.input}}
    expected = _run(model, feed)
    before = model.ByteSize()
    result = run_method(IntPack, model)
    assert result.stats["packed_tensors"] >= 1 and model.ByteSize() < before - 1000
    assert np.array_equal(_run(model, feed), expected)


def test_per_channel_int8_codes_use_their_range_and_are_left():
    """int_quant's default per-channel codes span each channel's whole range: nothing to gain."""
    model = onnx.load(MODELS / "cnn.onnx")
    run_method("int_quant", model, {"mode": "storage"})
    result = run_method(IntPack, model, {"min_size": 64})
    assert result.stats["packed_tensors"] == 0 and "saves less than min_saving (0.05)" in result.stats["left_reasons"]


def test_same_input_same_bytes():
    first, second = int8_matmul(), int8_matmul()
    run_method(IntPack, first)
    run_method(IntPack, second)
    assert first.SerializeToString() == second.SerializeToString()


def test_leaves_float_models_graph_inputs_small_tensors_and_poor_savings():
    float_model = onnx.load(MODELS / "mlp.onnx")
    before = float_model.SerializeToString()
    result = run_method(IntPack, float_model)
    assert result.stats["packed_tensors"] == 0 and float_model.SerializeToString() == before
    assert result.warnings == []  # no int8 tensor at all: nothing to say
    overridable = int8_matmul(as_input=True)
    assert run_method(IntPack, overridable).stats["left_reasons"] == {"also a graph input": 1}
    assert run_method(IntPack, int8_matmul(), {"min_size": 100000}).stats["left_tensors"] == 1
    poor = run_method(IntPack, int8_matmul(), {"min_saving": 0.9})
    assert poor.stats["left_reasons"] == {"saves less than min_saving (0.9)": 1}
    assert any("no int8 tensor was packed" in w for w in poor.warnings)


def test_conformance_kit_on_an_int8_graph():
    report = check_method(
        "int_pack",
        graphs={"int8_matmul": int8_matmul},
        models=[],
        hard_graphs_intended_unchanged="packs int8 tensors only; the hard graphs are float",
    )
    assert len(report.changed) == 1, report


@pytest.mark.parametrize("option", ["min_saving=2", "min_size=0", "bits=4"])
def test_bad_option_is_a_one_line_exit_2(cli, tmp_path, option):
    source = tmp_path / "m.onnx"
    onnx.save(int8_matmul(), str(source))
    before = source.read_bytes()
    out = tmp_path / "out.onnx"
    result = cli(str(source), "--plugin", f"int_pack:{option}", "--no-validate", "-o", str(out))
    assert_one_line_error(result, 2, "int_pack")
    assert not out.exists() and source.read_bytes() == before


ZOO = Path(os.environ.get("ONNXSHRINK_ZOO", Path(__file__).resolve().parents[2] / ".zoo"))


@pytest.mark.zoo
def test_zoo_int8_model_shrinks_with_the_same_outputs(cli, tmp_path):
    model = ZOO / "models" / "vfl_dvector_int8.onnx"
    if not model.exists():
        pytest.skip(f"zoo model missing: {model} (make zoo)")
    out, report = tmp_path / "v.onnx", tmp_path / "v.json"
    args = [str(model), "--plugin", "int_pack", "--data", str(ZOO / "data" / "vfl_dvector_int8.npz")]
    result = cli(*args, "-o", str(out), "--report", str(report), "-q")
    assert result.exit_code == 0, result.stderr
    assert out.stat().st_size < 0.9 * model.stat().st_size
    fidelity = json.loads(report.read_text())["validation"]["fidelity"]
    assert all(o["max_abs_error"] == 0 for o in fidelity["outputs"].values())
