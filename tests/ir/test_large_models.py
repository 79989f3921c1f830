"""Large models: external data stays on disk while editing, the output is streamed, results match.

The default suite forces the on-disk path on small files (ONNXSHRINK_LAZY_BYTES=0); the >2 GB
end-to-end run is marked slow (`make test-slow`).
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from onnxshrink.testing.large_models import make_mlp_stack
from tests.support.files import sha256


def run(path, x):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]


def weights(path):
    model = onnx.load(str(path))  # loads external data relative to the file
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


@pytest.mark.parametrize(
    "plugins",
    [
        ["weight_prune:sparsity=0.5,scope=global"],
        ["weight_prune:sparsity=0.3", "int_quant:mode=storage"],
        ["int_quant:mode=weights,bits=4"],
    ],
)
def test_on_disk_editing_gives_the_same_bytes_as_in_memory(cli, tmp_path, monkeypatch, plugins):
    (tmp_path / "in").mkdir()
    model = make_mlp_stack(tmp_path / "in" / "m.onnx", 3 << 20, width=128)
    before = {p.name: sha256(p) for p in model.parent.iterdir()}
    args = [a for p in plugins for a in ("--plugin", p)]
    outputs = {}
    for lazy in ("0", str(1 << 40)):
        monkeypatch.setenv("ONNXSHRINK_LAZY_BYTES", lazy)
        out = tmp_path / f"out{lazy}" / "m.onnx"
        result = cli(model, *args, "-o", out, "--no-validate", "--report", tmp_path / f"r{lazy}.json")
        assert result.exit_code == 0, result
        outputs[lazy] = {p.name: p.read_bytes() for p in out.parent.iterdir()}
    assert outputs["0"] == outputs[str(1 << 40)]
    assert sorted(outputs["0"]) == ["m.onnx", "m.onnx.data"]
    assert {p.name: sha256(p) for p in model.parent.iterdir()} == before  # input and its data untouched


def test_on_disk_pruning_is_correct_and_validates(cli, tmp_path, monkeypatch):
    (tmp_path / "in").mkdir()
    model = make_mlp_stack(tmp_path / "in" / "m.onnx", 2 << 20, width=64)
    monkeypatch.setenv("ONNXSHRINK_LAZY_BYTES", "0")
    out, report = tmp_path / "out" / "m.onnx", tmp_path / "r.json"
    result = cli(model, "--plugin", "weight_prune:sparsity=0.5", "-o", out, "--report", report, "--repeats", "3")
    assert result.exit_code == 0, result
    original, pruned = weights(model), weights(out)
    for name, values in original.items():
        kept = pruned[name] != 0
        assert np.mean(kept) == pytest.approx(0.5, abs=1e-3)
        np.testing.assert_array_equal(pruned[name][kept], values[kept])
        assert np.abs(values[~kept]).max() <= np.abs(values[kept]).min()
    assert json.loads(report.read_text())["validation"]["latency"]["cpu"]["status"] == "ok"
    x = np.random.default_rng(0).standard_normal((2, 64)).astype(np.float32)
    assert run(out, x).shape == (2, 64)


@pytest.mark.slow
def test_model_over_2gb_end_to_end(cli, tmp_path):
    """A 2.1 GB model (external data) pruned end to end; the result loads and is correct."""
    (tmp_path / "in").mkdir()
    model = make_mlp_stack(tmp_path / "in" / "big.onnx", int(2.1 * 2**30), width=1024)
    out = tmp_path / "out" / "big.onnx"
    result = cli(model, "--plugin", "weight_prune:sparsity=0.5", "-o", out, "--no-validate")
    assert result.exit_code == 0, result
    assert (out.parent / "big.onnx.data").stat().st_size == (model.parent / "big.onnx.data").stat().st_size
    onnx.checker.check_model(str(out))
    first = onnx.load(str(out), load_external_data=False).graph.initializer[0]
    info = {e.key: e.value for e in first.external_data}
    with open(out.parent / info["location"], "rb") as fh:
        fh.seek(int(info["offset"]))
        values = np.frombuffer(fh.read(int(info["length"])), np.float32)
    assert np.mean(values == 0) == pytest.approx(0.5, abs=1e-3)
    x = np.random.default_rng(0).standard_normal((1, 1024)).astype(np.float32)
    assert np.isfinite(run(out, x)).all()
