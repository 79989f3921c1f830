"""binarize: XNOR-Net scales, ternary thresholds, packed storage, the fidelity budget on a real model."""

from __future__ import annotations

import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import onnxshrink
from onnxshrink import UsageError
from onnxshrink.plugin.method import PluginSpec
from onnxshrink.run.pipeline import prepare_steps, run_steps
from onnxshrink.testing import reference_graphs as rg
from onnxshrink_plugins.binarize import binarize, ternarize
from tests.support.files import ROOT as REPO_ROOT
from tests.support.graphs import opset10_matmul

ROOT = str(REPO_ROOT)


@pytest.fixture(scope="module")
def cnn():
    calib = np.load(os.path.join(ROOT, "models", "cnn_calib.npz"))["input"]
    return onnx.load(os.path.join(ROOT, "models", "cnn.onnx")), [
        {"input": calib[i : i + 32]} for i in range(0, 128, 32)
    ]


def apply(registry, model, feeds, **options):
    steps = prepare_steps([PluginSpec("binarize", {k: str(v) for k, v in options.items()})], registry)
    [result] = run_steps(model, steps, seed=0, calibration=lambda: feeds, calibration_is_synthetic=False)
    return result


def logits(model, feeds):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return [session.run(None, feed)[0] for feed in feeds]


def agreement(a, b):
    return float(np.mean(np.concatenate([x.argmax(-1) for x in a]) == np.concatenate([y.argmax(-1) for y in b])))


def test_binary_values_and_scales_are_xnor_net():
    w = np.random.default_rng(0).standard_normal((6, 3, 3, 3)).astype(np.float32)
    qt = binarize(w, axis=0)
    np.testing.assert_array_equal(qt.values, np.where(w >= 0, 1, -1))
    np.testing.assert_allclose(qt.scale, np.abs(w).reshape(6, -1).mean(axis=1), rtol=1e-6)
    np.testing.assert_allclose(qt.dequantize(), np.where(w >= 0, 1, -1) * qt.scale[:, None, None, None], rtol=1e-6)


def test_ternary_threshold_and_scale():
    w = np.random.default_rng(1).standard_normal((20, 4)).astype(np.float32)  # MatMul (K, N): channels on axis 1
    qt = ternarize(w, axis=1, threshold=0.7)
    kept = np.abs(w) > 0.7 * np.abs(w).mean(axis=0)
    np.testing.assert_array_equal(qt.values, np.sign(w) * kept)
    np.testing.assert_allclose(qt.scale, (np.abs(w) * kept).sum(axis=0) / kept.sum(axis=0), rtol=1e-6)


@pytest.mark.parametrize("budget", [0.0, 0.05])
def test_fidelity_budget_is_respected_on_the_cnn(registry, cnn, budget):
    original, feeds = cnn
    model = onnx.ModelProto()
    model.CopyFrom(original)
    result = apply(registry, model, feeds, budget=budget)
    stats = result.stats
    measured = 1.0 - agreement(logits(original, feeds), logits(model, feeds))
    assert measured <= budget
    assert stats["fidelity_loss"] == pytest.approx(measured, abs=1e-6)  # the report shows what the model does
    assert stats["binarized_tensors"] >= 1 and stats["metric"] == "agreement"
    assert all(row["accepted"] == (row["loss"] <= budget) for row in stats["greedy_trail"])
    assert "destroys" in stats["note"] and any("destroys" in w for w in result.warnings)
    # binarized tensors cost about one bit per weight (plus a float scale per channel)
    assert all(s["bits_per_weight"] < 1.2 for s in stats["stored"])
    # the first and last weighted layers stay float
    assert {row["tensor"] for row in stats["left"]} >= {"stem.0.weight", "fc.weight"}


def test_no_budget_binarizes_everything_and_reports_the_damage(registry):
    model = onnx.load(os.path.join(ROOT, "models", "mlp.onnx"))
    calib = np.load(os.path.join(ROOT, "models", "mlp_calib.npz"))["input"]
    feeds = [{"input": calib}]
    before = model.ByteSize()
    stats = apply(registry, model, feeds, budget=1, keep_first_last="false").stats
    assert stats["binarized_tensors"] == stats["candidate_tensors"] == 3
    assert stats["fidelity_loss"] > 0.01  # it does hurt, and the stats say by how much
    assert model.ByteSize() < before / 10


def test_binarized_weights_decode_to_alpha_sign(registry):
    model = rg.conv_bn_residual(channels=16)
    reference = rg.conv_bn_residual(channels=16)
    feeds = [{"input": np.random.default_rng(0).standard_normal((8, 1, 8, 8)).astype(np.float32)}]
    stats = apply(registry, model, feeds, budget=1, min_size=0).stats
    assert stats["binarized_tensors"] == 2  # the two block convs; stem and fc are first and last
    for weight in onnxshrink.weight_tensors(reference):
        if weight.name.startswith("block."):
            weight.set_array(binarize(weight.array(), 0).dequantize())
    np.testing.assert_array_equal(logits(model, feeds)[0], logits(reference, feeds)[0])


def test_ternary_variant_stores_about_two_bits(registry):
    model = onnx.load(os.path.join(ROOT, "models", "transformer.onnx"))
    calib = np.load(os.path.join(ROOT, "models", "transformer_calib.npz"))["input"]
    stats = apply(registry, model, [{"input": calib[:64]}], variant="ternary", budget=1, metric="cosine").stats
    assert stats["binarized_tensors"] == stats["candidate_tensors"] == 12 and stats["metric"] == "cosine"
    shapes = {row["tensor"]: row["shape"] for row in stats["layers"]}
    for stored in stats["stored"]:
        k, n = shapes[stored["tensor"]]  # MatMul (K, N): one float32 scale per output channel N
        assert stored["bits_per_weight"] <= 2 + 32 * n / (k * n) + 0.1


def test_options_and_missing_data(registry):
    with pytest.raises(UsageError, match="option 'threshold' only applies to variant=ternary \\(variant=binary\\)"):
        prepare_steps([PluginSpec("binarize", {"threshold": "0.5"})], registry)
    with pytest.raises(UsageError, match="needs calibration data"):
        run_steps(rg.mlp(), prepare_steps([PluginSpec("binarize")], registry), seed=0)


@pytest.mark.parametrize("budget, binarized", [("1.0", True), ("0.0", False)])
def test_opset_10_model_is_upgraded_only_when_something_is_stored(cli, tmp_path, budget, binarized):
    """rivagan_encoder (opset 10) ended with exit 3: the packed decoder needs BitShift (opset 11)."""
    model, data = opset10_matmul(tmp_path)
    result = cli(
        model,
        "--plugin",
        f"binarize:budget={budget},keep_first_last=false",
        "--data",
        data,
        "--no-validate",
        "-o",
        tmp_path / "out.onnx",
        "--report",
        tmp_path / "r.json",
        "-q",
    )
    assert result.exit_code == 0, result
    out = onnx.load(tmp_path / "out.onnx")
    opset = next(o.version for o in out.opset_import if o.domain in ("", "ai.onnx"))
    assert opset == (11 if binarized else 10)
    assert ((tmp_path / "out.onnx").stat().st_size < (model).stat().st_size) == binarized
