"""requantize: int8/uint8 weights re-quantized per column to fewer bits, stored packed, unpacked to int8 at load."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxshrink
from onnxshrink.testing import REFERENCE_GRAPHS, check_method, run_method
from onnxshrink_plugins.requantize import Requantize
from tests.support.cli import assert_one_line_error
from tests.support.files import ROOT

MODELS_DIR = ROOT / "models"
ZOO = Path(os.environ.get("ONNXSHRINK_ZOO", ROOT / ".zoo"))
UNPACK_OPS = {"BitShift", "CumSum", "Cast"}


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def int8_codes(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """int8 codes over the full -127..127 range, as a per-tensor quantizer leaves them."""
    w = rng.standard_normal(shape).astype(np.float32) * rng.uniform(0.2, 1.0, shape[-1]).astype(np.float32)
    return np.clip(np.round(w / np.abs(w).max() * 127), -127, 127).astype(np.int8)


def dq_matmul(dtype: int = TensorProto.INT8, per_axis: bool = False, opset: int = 17) -> onnx.ModelProto:
    """input (batch, 256) → MatMul with DequantizeLinear(int8 or uint8 initializer, constant scale) → (batch, 96)."""
    rng = np.random.default_rng(0)
    codes = int8_codes(rng, (256, 96))
    if dtype == TensorProto.UINT8:
        codes, zero = (codes.astype(np.int16) + 128).astype(np.uint8), np.array(128, np.uint8)
    else:
        zero = np.array(0, np.int8)
    scale = np.array(0.01, np.float32)
    attrs = {}
    if per_axis:
        scale = rng.uniform(0.005, 0.02, 96).astype(np.float32)
        zero = np.full(96, zero, zero.dtype)
        attrs["axis"] = 1
    nodes = [
        helper.make_node("DequantizeLinear", ["W_q", "W_scale", "W_zp"], ["W"], name="dq", **attrs),
        helper.make_node("MatMul", ["input", "W"], ["output"], name="mm"),
    ]
    graph = helper.make_graph(
        nodes,
        "dq_matmul",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 256])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 96])],
        [
            numpy_helper.from_array(codes, "W_q"),
            numpy_helper.from_array(scale, "W_scale"),
            numpy_helper.from_array(zero, "W_zp"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def dynamic_quantize_lstm(hidden: int = 128, inputs: int = 96) -> onnx.ModelProto:
    """One com.microsoft::DynamicQuantizeLSTM with int8 W [1, in, 4h] and R [1, h, 4h], per-tensor scales.

    Inputs (docs/ContribOperators.md): X, W, R, B, sequence_lens, initial_h, initial_c, P, W_scale,
    W_zero_point, R_scale, R_zero_point.
    """
    rng = np.random.default_rng(1)
    w, r = int8_codes(rng, (1, inputs, 4 * hidden)), int8_codes(rng, (1, hidden, 4 * hidden))
    inits = [
        numpy_helper.from_array(w, "W_q"),
        numpy_helper.from_array(r, "R_q"),
        numpy_helper.from_array((rng.standard_normal((1, 8 * hidden)) * 0.1).astype(np.float32), "B"),
        numpy_helper.from_array(np.array([0.02], np.float32), "W_scale"),
        numpy_helper.from_array(np.array([0], np.int8), "W_zp"),
        numpy_helper.from_array(np.array([0.015], np.float32), "R_scale"),
        numpy_helper.from_array(np.array([0], np.int8), "R_zp"),
    ]
    lstm = helper.make_node(
        "DynamicQuantizeLSTM",
        ["X", "W_q", "R_q", "B", "", "", "", "", "W_scale", "W_zp", "R_scale", "R_zp"],
        ["Y", "Y_h", "Y_c"],
        name="lstm",
        domain="com.microsoft",
        hidden_size=hidden,
    )
    graph = helper.make_graph(
        [lstm],
        "dq_lstm",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["seq", "batch", inputs])],
        [
            helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["seq", 1, "batch", hidden]),
            helper.make_tensor_value_info("Y_h", TensorProto.FLOAT, [1, "batch", hidden]),
            helper.make_tensor_value_info("Y_c", TensorProto.FLOAT, [1, "batch", hidden]),
        ],
        inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def optimized(model: onnx.ModelProto, path: Path, level: str = "EXTENDED") -> onnx.ModelProto:
    """The graph onnxruntime runs after its load-time optimizations (constant folding included)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, f"ORT_ENABLE_{level}")
    options.optimized_model_filepath = str(path)
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return onnx.load(str(path))


def plain_equivalent(model: onnx.ModelProto, path: Path) -> onnx.ModelProto:
    """``model`` with every unpack chain replaced by the int8 initializer onnxruntime folds it to."""
    runs = optimized(model, path)
    folded = {t.name: t for t in runs.graph.initializer}
    plain = copy(model)
    computed = {n.output[0] for n in plain.graph.node if n.op_type not in ("DequantizeLinear", "MatMul")}
    for node in plain.graph.node:
        for name in node.input:
            if name in computed and name in folded:
                plain.graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(folded[name]), name))
    keep = [n for n in plain.graph.node if n.output[0] not in computed or n.domain == "com.microsoft"]
    del plain.graph.node[:]
    plain.graph.node.extend(keep)
    onnxshrink.tidy_model(plain)
    return plain


@pytest.mark.parametrize(
    "dtype, per_axis", [(TensorProto.INT8, False), (TensorProto.UINT8, False), (TensorProto.INT8, True)]
)
def test_dequantize_linear_weight_is_requantized_per_column_packed_and_folded(dtype, per_axis, tmp_path):
    original = dq_matmul(dtype, per_axis)
    model = copy(original)
    stats = run_method(Requantize, model).stats

    [tensor] = stats["tensors"]
    assert tensor["tensor"] == "W_q" and tensor["op"] == "DequantizeLinear" and tensor["scales"] == 96
    assert stats["rewritten_tensors"] == 1 and stats["bits"] == 7
    assert stats["bytes_after"] < stats["bytes_before"]
    assert 0 < stats["max_relative_error"] < 0.02
    assert len(model.SerializeToString()) < len(original.SerializeToString())
    dq = next(n for n in model.graph.node if n.op_type == "DequantizeLinear")
    assert onnx.helper.get_attribute_value(next(a for a in dq.attribute if a.name == "axis")) == 1
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    assert inits[dq.input[1]].shape == (96,)
    assert "W_q" not in inits and {"BitShift", "CumSum"} <= {n.op_type for n in model.graph.node}

    # onnxruntime folds the unpack chain: the session holds a plain 7-bit-valued int8 (uint8) initializer
    # (at the extended level DequantizeLinear → MatMul then becomes MatMulNBits, as for any int8 weight)
    assert not UNPACK_OPS & {n.op_type for n in optimized(model, tmp_path / "ext.onnx").graph.node}
    runs = optimized(model, tmp_path / "opt.onnx", "BASIC")
    assert [n.op_type for n in runs.graph.node] == ["DequantizeLinear", "MatMul"]
    codes = next(
        numpy_helper.to_array(t) for t in runs.graph.initializer if t.data_type == dtype and t.dims == [256, 96]
    )
    centered = codes.astype(np.int16) - (0 if dtype == TensorProto.INT8 else 64)
    assert centered.min() >= -63 and centered.max() <= 63 and centered.max() == 63

    feeds = {"input": np.random.default_rng(2).standard_normal((8, 256)).astype(np.float32)}
    expected, got = session(original).run(None, feeds)[0], session(model).run(None, feeds)[0]
    assert cosine(expected, got) > 0.999
    assert not np.array_equal(expected, got)


def test_requantized_values_equal_the_numpy_reference():
    """The new codes and scales compute (codes - zp) * scale within half a step of the new grid per column."""
    original = dq_matmul(TensorProto.UINT8)
    model = copy(original)
    run_method(Requantize, model, {"bits": "4"})
    before = (numpy_helper.to_array(original.graph.initializer[0]).astype(np.float32) - 128) * 0.01
    rebuilt = session(_dequantized(model)).run(None, {})[0]
    step = np.abs(before).max(axis=0) / 7
    assert np.all(np.abs(rebuilt - before) <= step / 2 + 1e-6)


def _dequantized(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` cut after its DequantizeLinear: the float weight as the output."""
    cut = copy(model)
    keep = [n for n in cut.graph.node if n.op_type != "MatMul"]
    del cut.graph.node[:]
    cut.graph.node.extend(keep)
    del cut.graph.input[:]
    del cut.graph.output[:]
    cut.graph.output.append(helper.make_tensor_value_info("W", TensorProto.FLOAT, None))
    return cut


def test_dynamic_quantize_lstm_weights_are_requantized_per_column_and_folded(tmp_path):
    original = dynamic_quantize_lstm()
    model = copy(original)
    stats = run_method(Requantize, model).stats

    assert sorted(t["tensor"] for t in stats["tensors"]) == ["R_q", "W_q"]
    assert all(t["scales"] == 512 and t["op"] == "DynamicQuantizeLSTM" for t in stats["tensors"])
    assert len(model.SerializeToString()) < len(original.SerializeToString())
    [lstm] = [n for n in model.graph.node if n.op_type == "DynamicQuantizeLSTM"]
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for slot in (8, 10):
        assert inits[lstm.input[slot]].shape == (1, 512) and inits[lstm.input[slot + 1]].shape == (1, 512)
        assert not inits[lstm.input[slot + 1]].any()

    runs = optimized(model, tmp_path / "opt.onnx")
    assert not UNPACK_OPS & {n.op_type for n in runs.graph.node}
    assert [n.op_type for n in runs.graph.node] == ["DynamicQuantizeLSTM"]

    feeds = {"X": np.random.default_rng(3).standard_normal((5, 2, 96)).astype(np.float32)}
    for expected, got in zip(session(original).run(None, feeds), session(model).run(None, feeds)):
        assert cosine(expected, got) > 0.995
    # the packed model computes exactly what the same codes stored as plain int8 initializers compute
    plain = plain_equivalent(model, tmp_path / "opt2.onnx")
    assert not UNPACK_OPS & {n.op_type for n in plain.graph.node}
    for a, b in zip(session(plain).run(None, feeds), session(model).run(None, feeds)):
        np.testing.assert_array_equal(a, b)


def test_fewer_bits_more_error_and_smaller_files():
    sizes, errors = [], []
    for bits in (7, 5, 3):
        model = dynamic_quantize_lstm()
        stats = run_method(Requantize, model, {"bits": str(bits)}).stats
        sizes.append(len(model.SerializeToString()))
        errors.append(stats["max_relative_error"])
    assert sizes == sorted(sizes, reverse=True) and errors == sorted(errors)


def test_per_column_false_keeps_the_scale_layout():
    model = dynamic_quantize_lstm()
    stats = run_method(Requantize, model, {"per_column": "false"}).stats
    [lstm] = [n for n in model.graph.node if n.op_type == "DynamicQuantizeLSTM"]
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    assert inits[lstm.input[8]].shape == (1,) and all(t["scales"] == 1 for t in stats["tensors"])


def test_opset_11_per_tensor_scale_stays_per_tensor():
    model = dq_matmul(opset=11)
    stats = run_method(Requantize, model).stats
    [tensor] = stats["tensors"]
    assert tensor["scales"] == 1
    dq = next(n for n in model.graph.node if n.op_type == "DequantizeLinear")
    assert not any(a.name == "axis" for a in dq.attribute)
    session(model)  # onnxruntime loads it


def test_small_tensors_are_left_with_a_reason():
    model = REFERENCE_GRAPHS["qdq_quantized"]()  # a 16x16 int8 weight
    before = model.SerializeToString()
    result = run_method(Requantize, model)
    assert result.stats["rewritten_tensors"] == 0
    assert result.stats["left"] == [
        {"tensor": "W_quantized", "shape": [16, 16], "reason": "fewer than min_size (1024) elements"}
    ]
    assert model.SerializeToString() == before
    stats = run_method(Requantize, model, {"min_size": "0"}).stats
    assert stats["left"][0]["reason"].startswith("not smaller at 7 bits")


def test_exclude():
    model = dynamic_quantize_lstm()
    stats = run_method(Requantize, model, {"exclude": "[R_q]"}).stats
    assert [t["tensor"] for t in stats["tensors"]] == ["W_q"]
    assert {"tensor": "R_q", "shape": [1, 128, 512], "reason": "excluded (exclude=)"} in stats["left"]


def test_matmul_integer_weights_are_left_with_the_reason():
    rng = np.random.default_rng(4)
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["x", "B", "", "B_zp"], ["y"], name="mmi")],
        "mmi",
        [helper.make_tensor_value_info("x", TensorProto.UINT8, ["batch", 64])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, ["batch", 64])],
        [
            numpy_helper.from_array(int8_codes(rng, (64, 64)), "B"),
            numpy_helper.from_array(np.array(0, np.int8), "B_zp"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    result = run_method(Requantize, model)
    assert [e["tensor"] for e in result.stats["left"]] == ["B"]
    assert "MatMulInteger" in result.stats["left"][0]["reason"]
    assert any("unchanged" in w for w in result.warnings)


def test_deterministic_bytes():
    first, second = dynamic_quantize_lstm(), dynamic_quantize_lstm()
    run_method(Requantize, first)
    run_method(Requantize, second)
    assert first.SerializeToString() == second.SerializeToString()


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_float_model_is_unchanged_with_a_warning(name):
    model = onnx.load(str(MODELS_DIR / f"{name}.onnx"))
    before = model.SerializeToString()
    result = run_method(Requantize, model)
    assert result.stats["rewritten_tensors"] == 0 and result.stats["left"] == []
    assert any("no int8/uint8 weight" in w for w in result.warnings)
    assert model.SerializeToString() == before


def test_conformance_kit_on_integer_graphs():
    report = check_method(
        "requantize",
        graphs={"dq_matmul": dq_matmul, "dq_matmul_uint8": lambda: dq_matmul(TensorProto.UINT8)},
        models=[],
        hard_graphs_intended_unchanged="rewrites int8/uint8 weights only; the hard graphs are float",
    )
    assert len(report.changed) == 2, report


@pytest.mark.parametrize(
    "option, message", [("bits=8", "bits"), ("bits=1", "bits"), ("per_column=maybe", "per_column")]
)
def test_bad_option_is_a_one_line_exit_2(cli, tmp_path, option, message):
    source = tmp_path / "lstm.onnx"
    onnx.save(dynamic_quantize_lstm(), str(source))
    before = source.read_bytes()
    out = tmp_path / "out.onnx"
    result = cli(source, "--plugin", f"requantize:{option}", "-o", out, "--no-validate")
    assert_one_line_error(result, 2, "requantize", message)
    assert not out.exists() and source.read_bytes() == before


def test_the_cli_writes_a_smaller_model_and_reports_the_stats(cli, tmp_path):
    source, out, report = tmp_path / "lstm.onnx", tmp_path / "small.onnx", tmp_path / "report.json"
    onnx.save(dynamic_quantize_lstm(), str(source))
    result = cli(source, "--plugin", "requantize:bits=6", "-o", out, "--report", report, "--no-validate", "--quiet")
    assert result.exit_code == 0, result
    [step] = json.loads(report.read_text())["steps"]
    assert step["plugin"] == "requantize" and step["stats"]["rewritten_tensors"] == 2 and step["stats"]["bits"] == 6
    assert out.stat().st_size < 0.85 * source.stat().st_size


def test_search_space_for_tune():
    assert [t.describe() for t in Requantize.search_space] == [{"option": "bits", "choices": [7, 6, 5, 4]}]


@pytest.mark.zoo
def test_vfl_dvector_int8_at_7_bits(tmp_path):
    model, data = ZOO / "models" / "vfl_dvector_int8.onnx", ZOO / "data" / "vfl_dvector_int8.npz"
    if not model.exists() or not data.exists():
        pytest.skip(f"zoo model vfl_dvector_int8 not found under {ZOO} (make zoo, or set ONNXSHRINK_ZOO)")
    proto = onnx.load(str(model))
    stats = run_method(Requantize, proto).stats
    assert stats["rewritten_tensors"] >= 5
    out = tmp_path / "v.onnx"
    onnx.save(proto, str(out))
    assert out.stat().st_size < 0.9 * model.stat().st_size
    stacked = np.load(data)
    n = len(stacked[stacked.files[0]])
    a = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    b = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    worst = 1.0
    for i in range(n // 2, n):
        feed = {k: np.asarray(stacked[k][i]) for k in stacked.files}
        for x, y in zip(a.run(None, feed), b.run(None, feed)):
            worst = min(worst, cosine(x, y))
    assert worst >= 0.99


def test_blocked_dequantize_linear_keeps_its_blocks():
    """block_size (opset 21): one factor per block, the scale keeps its (blocks, columns) layout."""
    rng = np.random.default_rng(5)
    scale = rng.uniform(0.005, 0.02, (8, 96)).astype(np.float32)
    nodes = [
        helper.make_node("DequantizeLinear", ["W_q", "W_scale"], ["W"], name="dq", axis=0, block_size=32),
        helper.make_node("MatMul", ["input", "W"], ["output"], name="mm"),
    ]
    graph = helper.make_graph(
        nodes,
        "blocked",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 256])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 96])],
        [numpy_helper.from_array(int8_codes(rng, (256, 96)), "W_q"), numpy_helper.from_array(scale, "W_scale")],
    )
    original = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    original.ir_version = 10
    model = copy(original)
    [tensor] = run_method(Requantize, model).stats["tensors"]
    assert tensor["scales"] == 8 * 96
    dq = next(n for n in model.graph.node if n.op_type == "DequantizeLinear")
    assert next(numpy_helper.to_array(t) for t in model.graph.initializer if t.name == dq.input[1]).shape == (8, 96)
    feeds = {"input": rng.standard_normal((4, 256)).astype(np.float32)}
    assert cosine(session(original).run(None, feeds)[0], session(model).run(None, feeds)[0]) > 0.9999
    assert len(model.SerializeToString()) < len(original.SerializeToString())


def test_uint8_lstm_weights_keep_their_type_with_a_mid_zero_point():
    original = dynamic_quantize_lstm()
    inits = {t.name: t for t in original.graph.initializer}
    for name in ("W_q", "R_q"):
        shifted = numpy_helper.to_array(inits[name]).astype(np.int16) + 128
        inits[name].CopyFrom(numpy_helper.from_array(shifted.astype(np.uint8), name))
    for name in ("W_zp", "R_zp"):
        inits[name].CopyFrom(numpy_helper.from_array(np.array([128], np.uint8), name))
    model = copy(original)
    stats = run_method(Requantize, model).stats
    assert stats["rewritten_tensors"] == 2 and {t["dtype"] for t in stats["tensors"]} == {"uint8"}
    [lstm] = [n for n in model.graph.node if n.op_type == "DynamicQuantizeLSTM"]
    zero = next(numpy_helper.to_array(t) for t in model.graph.initializer if t.name == lstm.input[9])
    assert zero.dtype == np.uint8 and (zero == 64).all()
    feeds = {"X": np.random.default_rng(6).standard_normal((5, 2, 96)).astype(np.float32)}
    for expected, got in zip(session(original).run(None, feeds), session(model).run(None, feeds)):
        assert cosine(expected, got) > 0.995
