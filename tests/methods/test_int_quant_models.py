"""int_quant on the trained models in models/: every mode keeps the model valid and runnable, and the
accuracy on models/<name>_eval.npz drops by no more than the stated bound."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from onnxshrink.plugin.method import PluginSpec
from onnxshrink.run.pipeline import prepare_steps, run_steps
from tests.support.files import MODELS

NAMES = ("cnn", "mlp", "transformer")

# Largest accuracy drop (percentage points on the eval split) each configuration may cost.
BOUNDS = {
    "storage": 1.0,
    "weights": 1.0,
    "dynamic": 1.0,
    "static": 1.0,  # the bar: int8 static on the CNN within about 1 point
    "weights-int4": 2.0,
    "storage-int4": 2.0,
}
OPTIONS = {
    "storage": {"mode": "storage"},
    "weights": {"mode": "weights"},
    "dynamic": {"mode": "dynamic"},
    "static": {"mode": "static"},
    "weights-int4": {"mode": "weights", "bits": "4"},
    "storage-int4": {"mode": "storage", "bits": "4"},
}


def _files(name: str) -> tuple[Path, Path, Path]:
    return MODELS / f"{name}.onnx", MODELS / f"{name}_eval.npz", MODELS / f"{name}_calib.npz"


def _need(name: str) -> None:
    if not all(p.exists() for p in _files(name)):
        pytest.skip(f"models/{name}.onnx and its .npz files are not built")


@pytest.fixture(scope="module")
def loaded():
    cache: dict[str, tuple] = {}

    def get(name: str):
        if name not in cache:
            model_path, eval_path, calib_path = _files(name)
            evaluation, calibration = np.load(eval_path), np.load(calib_path)
            model = onnx.load(model_path)
            feeds = [
                {model.graph.input[0].name: calibration["input"][i : i + 16]}
                for i in range(0, len(calibration["input"]), 16)
            ]
            cache[name] = (
                model,
                feeds,
                evaluation["input"],
                evaluation["labels"],
                accuracy(model, evaluation["input"], evaluation["labels"]),
            )
        return cache[name]

    return get


def accuracy(model: onnx.ModelProto, inputs: np.ndarray, labels: np.ndarray) -> float:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    logits = sess.run(None, {sess.get_inputs()[0].name: inputs})[0]
    return float(np.mean(np.argmax(logits, axis=-1) == labels)) * 100


@pytest.mark.parametrize("config", list(OPTIONS))
@pytest.mark.parametrize("name", NAMES)
def test_mode_on_model_keeps_accuracy(registry, loaded, name, config):
    _need(name)
    model, feeds, inputs, labels, float_accuracy = loaded(name)
    quantized = onnx.ModelProto()
    quantized.CopyFrom(model)
    steps = prepare_steps([PluginSpec("int_quant", OPTIONS[config])], registry)
    [result] = run_steps(
        quantized, steps, seed=0, calibration=lambda: feeds, calibration_is_synthetic=False
    )  # checks onnx + ORT
    stats = result.stats
    assert stats["quantized_tensors"] > 0 and not [item for item in stats["left"] if "tensor" in item]
    assert quantized.ByteSize() < model.ByteSize() * (0.55 if config != "static" else 0.6)
    drop = float_accuracy - accuracy(quantized, inputs, labels)
    assert drop <= BOUNDS[config], f"{name} {config}: accuracy {float_accuracy:.2f} → drop {drop:.2f} points"


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_auto_on_model(registry, loaded, name):
    _need(name)
    model, feeds, inputs, labels, float_accuracy = loaded(name)
    quantized = onnx.ModelProto()
    quantized.CopyFrom(model)
    steps = prepare_steps([PluginSpec("int_quant", {})], registry)
    [result] = run_steps(quantized, steps, seed=0, calibration=lambda: feeds, calibration_is_synthetic=False)
    report = result.stats["auto"]
    assert report["winner"] is not None, report["why"]
    assert quantized.ByteSize() < model.ByteSize() / 2.5
    assert float_accuracy - accuracy(quantized, inputs, labels) <= 1.0


def test_sensitivity_table_on_the_cnn(registry, loaded):
    _need("cnn")
    model, feeds, inputs, labels, float_accuracy = loaded("cnn")
    quantized = onnx.ModelProto()
    quantized.CopyFrom(model)
    steps = prepare_steps(
        [PluginSpec("int_quant", {"mode": "storage", "bits": "2", "sensitivity": "true", "target_cosine": "0.99"})],
        registry,
    )
    [result] = run_steps(quantized, steps, seed=0, calibration=lambda: feeds[:2], calibration_is_synthetic=False)
    table = result.stats["sensitivity"]["layers"]
    assert len(table) == 11 and all(row["op_type"] in ("Conv", "Gemm") for row in table)
    assert result.stats["sensitivity"]["met_target"]
    assert float_accuracy - accuracy(quantized, inputs, labels) <= 2.0
