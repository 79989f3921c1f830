"""gptq: error compensation beats round-to-nearest, bias correction, storage forms, real models, odd graphs."""

from __future__ import annotations

import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxshrink import UsageError, quantize
from onnxshrink.plugin.method import PluginSpec
from onnxshrink.run.pipeline import prepare_steps, run_steps
from onnxshrink.testing import reference_graphs as rg
from onnxshrink_plugins.gptq.core import gptq, rtn
from onnxshrink_plugins.shared.layers import im2col
from tests.support.files import ROOT as REPO_ROOT
from tests.support.graphs import opset10_matmul

ROOT = str(REPO_ROOT)


def quantize_with(registry, model, feeds, **options):
    steps = prepare_steps([PluginSpec("gptq", {k: str(v) for k, v in options.items()})], registry)
    [result] = run_steps(model, steps, seed=0, calibration=lambda: feeds, calibration_is_synthetic=False)
    return result.stats


def run(model, feed):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)[0]


def correlated_inputs(rng, n, k=64, rank=6, mean=0.0):
    """Inputs that live near a low-dimensional subspace, as real activations do."""
    basis = np.random.default_rng(99).standard_normal((rank, k))
    return (rng.standard_normal((n, rank)) @ basis + 0.05 * rng.standard_normal((n, k)) + mean).astype(np.float32)


def linear_layer(k=64, n=32, bias=True) -> onnx.ModelProto:
    rng = np.random.default_rng(5)
    inits = [numpy_helper.from_array((rng.standard_normal((k, n)) * 0.1).astype(np.float32), "W")]
    nodes = [helper.make_node("MatMul", ["x", "W"], ["m" if bias else "y"], name="fc")]
    if bias:
        inits.append(numpy_helper.from_array(np.zeros(n, np.float32), "b"))
        nodes.append(helper.make_node("Add", ["m", "b"], ["y"], name="fc_bias"))
    graph = helper.make_graph(
        nodes,
        "layer",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", n])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def conv_layer() -> onnx.ModelProto:
    rng = np.random.default_rng(6)
    w = (rng.standard_normal((16, 8, 3, 3)) * 0.1).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "W"], ["y"], name="conv", pads=[1, 1, 1, 1], strides=[2, 1])],
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 16, 3, 6])],
        [numpy_helper.from_array(w, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def smooth_images(rng, n):
    """Spatially correlated inputs: neighbouring pixels and channels move together."""
    base = rng.standard_normal((n, 2, 6, 6))
    mix = np.random.default_rng(98).standard_normal((8, 2))
    blurred = base + np.roll(base, 1, axis=2) + np.roll(base, 1, axis=3)
    return np.einsum("cd,ndhw->nchw", mix, blurred).astype(np.float32)


@pytest.mark.parametrize("bits,group", [(3, 0), (4, 16)])
def test_gptq_beats_round_to_nearest_on_held_out_inputs(registry, bits, group):
    rng = np.random.default_rng(0)
    calibration = [{"x": correlated_inputs(rng, 128)} for _ in range(2)]
    held_out = {"x": correlated_inputs(rng, 512)}
    reference = run(linear_layer(), held_out)
    errors = {}
    for algorithm in ("rtn", "gptq"):
        model = linear_layer()
        stats = quantize_with(
            registry, model, calibration, algorithm=algorithm, bits=bits, group_size=group, bias_correction="false"
        )
        errors[algorithm] = float(np.sum((run(model, held_out) - reference) ** 2))
        assert stats["quantized_tensors"] == 1
    assert errors["gptq"] < 0.5 * errors["rtn"], errors
    # the per-layer stats agree: gptq's reconstruction error on the calibration data is the smaller one
    assert stats["layers"][0]["error"] < 0.5 * stats["layers"][0]["error_rtn"]


def test_gptq_beats_round_to_nearest_on_a_conv(registry):
    rng = np.random.default_rng(1)
    calibration = [{"x": smooth_images(rng, 64)}]
    held_out = {"x": smooth_images(rng, 128)}
    reference = run(conv_layer(), held_out)
    errors = {}
    for algorithm in ("rtn", "gptq"):
        model = conv_layer()
        quantize_with(registry, model, calibration, algorithm=algorithm, bits=3, group_size=0, bias_correction="false")
        errors[algorithm] = float(np.sum((run(model, held_out) - reference) ** 2))
    assert errors["gptq"] < 0.7 * errors["rtn"], errors


def test_im2col_matches_onnxruntime_conv():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 8, 6, 6)).astype(np.float32)
    w = onnx.numpy_helper.to_array(conv_layer().graph.initializer[0])
    rows = im2col(x, kernel=(3, 3), strides=(2, 1), dilations=(1, 1), pads=(1, 1, 1, 1))
    ours = (rows @ w.reshape(16, -1).T).reshape(2, 3, 6, 16).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(ours, run(conv_layer(), {"x": x}), rtol=1e-4, atol=1e-5)


def test_uncorrelated_inputs_make_gptq_round_to_nearest():
    """With a diagonal Hessian no error can be pushed anywhere: GPTQ's codes are RTN's."""
    w = np.random.default_rng(3).standard_normal((16, 40)).astype(np.float32)
    h = np.diag(np.random.default_rng(4).random(40) + 0.5)
    for group in (0, 8):
        ours, nearest = gptq(w, h, 3, group_size=group), rtn(w, 3, False, group)
        np.testing.assert_array_equal(ours.values, nearest.values)
        np.testing.assert_array_equal(ours.scale, nearest.scale)


def test_act_order_keeps_groups_contiguous():
    rng = np.random.default_rng(5)
    w = rng.standard_normal((8, 32)).astype(np.float32)
    x = rng.standard_normal((256, 32)) * np.linspace(0.1, 3, 32)
    qt = gptq(w, 2 * x.T @ x / 256, 4, group_size=8, act_order=True)
    assert qt.scale.shape == (8, 4) and qt.block_size == 8 and qt.axis == 1
    np.testing.assert_array_equal(qt.scale, rtn(w, 4, False, 8).scale)  # static groups: scales of the original weights


def test_bias_correction_reduces_the_mean_output_error(registry):
    rng = np.random.default_rng(6)
    calibration = [{"x": correlated_inputs(rng, 256, mean=1.5)}]
    held_out = {"x": correlated_inputs(rng, 1024, mean=1.5)}
    reference = run(linear_layer(), held_out)
    bias_error = {}
    for correct in (False, True):
        model = linear_layer()
        stats = quantize_with(
            registry, model, calibration, algorithm="rtn", bits=2, group_size=0, bias_correction=str(correct).lower()
        )
        bias_error[correct] = float(np.mean(np.abs(np.mean(run(model, held_out) - reference, axis=0))))
    assert bias_error[True] < 0.3 * bias_error[False], bias_error
    assert stats["layers"][0]["bias_correction"][0]["into"] == "bias"  # folded into the Add's constant


def test_bias_correction_adds_a_bias_where_there_is_none(registry):
    rng = np.random.default_rng(7)
    model = linear_layer(bias=False)
    stats = quantize_with(registry, model, [{"x": correlated_inputs(rng, 64, mean=1.0)}], bits=2, group_size=0)
    assert stats["layers"][0]["bias_correction"][0]["into"] == "new Add"
    assert [n.op_type for n in model.graph.node if n.op_type in ("MatMul", "Add")] == ["MatMul", "Add"]
    model = rg.conv_bn_residual()
    feeds = [{"input": rng.standard_normal((4, 1, 8, 8)).astype(np.float32)}]
    stats = quantize_with(registry, model, feeds, bits=4, min_size=0)
    conv_rows = [row for row in stats["layers"] if row["op_type"] == "Conv"]
    assert conv_rows and all(row["bias_correction"][0]["into"] == "new bias" for row in conv_rows)
    assert all(len(n.input) == 3 for n in model.graph.node if n.op_type == "Conv")


def real_model(name):
    data = np.load(os.path.join(ROOT, "models", f"{name}_calib.npz"))["input"]
    evaluation = np.load(os.path.join(ROOT, "models", f"{name}_eval.npz"))
    return (
        onnx.load(os.path.join(ROOT, "models", f"{name}.onnx")),
        [{"input": data[i : i + 32]} for i in range(0, 128, 32)],
        evaluation,
    )


def accuracy(model, evaluation):
    return float(np.mean(np.argmax(run(model, {"input": evaluation["input"]}), axis=-1) == evaluation["labels"]))


def test_transformer_4bit_packed_keeps_accuracy_and_folds(registry, tmp_path):
    model, feeds, evaluation = real_model("transformer")
    float_accuracy, float_size = accuracy(model, evaluation), model.ByteSize()
    stats = quantize_with(registry, model, feeds, bits=4, group_size=32)
    assert stats["quantized_tensors"] == 14 and 4 < stats["bits_per_weight"] < 6
    assert all(row["error"] < row["error_rtn"] for row in stats["layers"])
    assert accuracy(model, evaluation) >= float_accuracy - 0.01
    assert model.ByteSize() < float_size / 3
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    ops = {n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node}
    assert not ops & {"BitShift", "CumSum", "Gather", "Cast", "Expand"}  # every decode chain folded at load


def test_dequantize_linear_form_raises_the_opset(registry):
    model, feeds, evaluation = real_model("mlp")
    float_accuracy = accuracy(model, evaluation)
    stats = quantize_with(registry, model, feeds, bits=4, form="dequantize_linear")
    assert stats["quantized_tensors"] == 3
    assert next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) == 21
    assert sum(n.op_type == "DequantizeLinear" for n in model.graph.node) == 3
    assert accuracy(model, evaluation) >= float_accuracy - 0.01


@pytest.mark.parametrize("builder", [rg.if_subgraph, rg.shared_weight, rg.constant_node_weights, rg.fp16_mlp])
def test_odd_graphs(registry, builder):
    model = builder()
    dtype = helper.tensor_dtype_to_np_dtype(model.graph.input[0].type.tensor_type.elem_type)
    feeds = [{"input": np.random.default_rng(0).standard_normal((16, 16)).astype(dtype)}]
    stats = quantize_with(registry, model, feeds, bits=4, group_size=8, min_size=0)
    assert stats["quantized_tensors"] == len(stats["layers"]) > 0
    onnx.checker.check_model(model, full_check=True)
    if builder is rg.if_subgraph:
        reasons = {row["tensor"]: row.get("reason", "") for row in stats["layers"]}
        assert (
            "cannot be observed" in reasons["W_inner"]
            and "cannot be observed" in reasons["W_outer"]
            and not reasons["W_in"]
        )


def test_same_seed_same_bytes(registry):
    outputs = []
    for _ in range(2):
        model, feeds, _ = real_model("mlp")
        quantize_with(registry, model, feeds, bits=3, act_order="true")
        outputs.append(model.SerializeToString(deterministic=True))
    assert outputs[0] == outputs[1]


def test_bad_options(registry):
    with pytest.raises(UsageError, match="algorithm=gptq"):
        prepare_steps([PluginSpec("gptq", {"algorithm": "rtn", "act_order": "true"})], registry)
    with pytest.raises(UsageError, match="between 2 and 8"):
        prepare_steps([PluginSpec("gptq", {"bits": "9"})], registry)
    model = rg.mlp()
    with pytest.raises(UsageError, match="needs calibration data"):
        run_steps(model, prepare_steps([PluginSpec("gptq")], registry), seed=0)
    with pytest.raises(UsageError, match="exclude entry 'nope'"):
        quantize_with(registry, rg.mlp(), [{"input": np.ones((2, 16), np.float32)}], exclude="[nope]")


def test_rtn_grid_is_onnxshrink_quantize():
    w = np.random.default_rng(8).standard_normal((8, 64)).astype(np.float32)
    np.testing.assert_array_equal(
        rtn(w, 4, False, 32).values, quantize(w, 4, symmetric=False, axis=1, block_size=32).values
    )


def test_auto_form_uses_dequantize_linear_for_matmul_only_where_the_opset_allows(registry):
    import onnxshrink

    feeds = [{"input": np.random.default_rng(9).standard_normal((16, 16)).astype(np.float32)}]
    model = rg.mlp()  # opset 17: no int4 DequantizeLinear, so everything packed and the opset unchanged
    stats = quantize_with(registry, model, feeds, form="auto", min_size=0, group_size=16)
    assert {row["form"] for row in stats["layers"]} == {"packed"} and onnxshrink.model_opset(model) == 17
    model = onnxshrink.upgrade_opset(rg.mlp(), 21)
    stats = quantize_with(registry, model, feeds, form="auto", min_size=0, group_size=16)
    assert {row["tensor"]: row["form"] for row in stats["layers"]} == {
        "fc1.weight": "packed",
        "fc2.weight": "dequantize_linear",
    }


def test_cli_run_writes_a_smaller_model_and_reports_bits(cli, tmp_path):
    import json

    out, report = tmp_path / "mlp.gptq.onnx", tmp_path / "report.json"
    result = cli(
        os.path.join(ROOT, "models", "mlp.onnx"),
        "--plugin",
        "gptq:bits=4,group_size=32",
        "--data",
        os.path.join(ROOT, "models", "mlp_calib.npz"),
        "-o",
        out,
        "--report",
        report,
    )
    assert result.exit_code == 0, result
    assert out.stat().st_size < os.path.getsize(os.path.join(ROOT, "models", "mlp.onnx")) / 4
    text = json.dumps(json.loads(report.read_text()))
    assert '"bits_per_weight"' in text and '"mean_relative_error_rtn"' in text


@pytest.mark.parametrize("percdamp", [0.0, 1e-30])
def test_vanishing_damping_on_a_rank_deficient_hessian_still_works(percdamp):
    """Fewer calibration rows than inputs: H is singular, so the damping has to grow until it is not."""
    rng = np.random.default_rng(10)
    x = rng.standard_normal((4, 32))
    w = rng.standard_normal((8, 32)).astype(np.float32)
    qt = gptq(w, 2 * x.T @ x / 4, 4, percdamp=percdamp)
    assert np.all(np.isfinite(qt.dequantize())) and qt.values.shape == (8, 32)


def test_opset_10_model_is_upgraded_for_the_packed_form(cli, tmp_path):
    """rivagan_decoder (opset 10) ended with exit 3 under gptq:bits=4: the packed decoder needs opset 11."""
    model, data = opset10_matmul(tmp_path)
    result = cli(model, "--plugin", "gptq:bits=4", "--data", data, "--no-validate", "-o", tmp_path / "out.onnx", "-q")
    assert result.exit_code == 0, result
    out = onnx.load(tmp_path / "out.onnx")
    assert next(o.version for o in out.opset_import if o.domain in ("", "ai.onnx")) >= 11
    assert (tmp_path / "out.onnx").stat().st_size < (model).stat().st_size
