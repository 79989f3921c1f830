"""int_quant's default on real zoo models: file <= 0.30x and worst per-feed cosine >= 0.99 on the
evaluation half (feeds the run never saw). Slow; needs the zoo (``make zoo``, or ONNXSHRINK_ZOO)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from tests.support.files import ROOT

pytestmark = [pytest.mark.zoo, pytest.mark.slow]

ZOO = Path(os.environ.get("ONNXSHRINK_ZOO", ROOT / ".zoo"))
# models the default meets the target on with margin (the others and why: docs/methods/int_quant.md)
MODELS = ["g2p_id_lstm_decoder", "arabic_romanizer_encoder", "g2p_id_bert"]


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    norms = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / norms) if norms else float(np.array_equal(a, b))


@pytest.mark.parametrize("name", MODELS)
def test_default_meets_the_target_on_held_out_feeds(name, tmp_path):
    model, data = ZOO / "models" / f"{name}.onnx", ZOO / "data" / f"{name}.npz"
    if not model.exists() or not data.exists():
        pytest.skip(f"zoo model {name} not found under {ZOO} (make zoo, or set ONNXSHRINK_ZOO)")
    stacked = np.load(data)
    n = len(stacked[stacked.files[0]])
    np.savez(tmp_path / "calibration.npz", **{k: stacked[k][: n // 2] for k in stacked.files})
    out = tmp_path / "q.onnx"
    cli = [
        sys.executable,
        "-m",
        "onnxshrink",
        str(model),
        "--plugin",
        "int_quant",
        "--data",
        str(tmp_path / "calibration.npz"),
        "-o",
        str(out),
        "--no-validate",
        "-q",
    ]
    done = subprocess.run(cli, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert out.stat().st_size <= 0.30 * model.stat().st_size
    float_session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    quantized_session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for i in range(n // 2, n):
        feed = {k: np.asarray(stacked[k][i]) for k in stacked.files}
        for a, b in zip(float_session.run(None, feed), quantized_session.run(None, feed)):
            if np.asarray(a).dtype.kind == "f":
                assert _cosine(a, b) >= 0.99
