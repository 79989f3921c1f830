"""validate() and bench_single() on small models with real CPU sessions; the report key contract."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnxruntime as ort
import pytest

from onnxshrink.errors import InvalidModelError, UsageError
from onnxshrink.validate import bench_single, load_feeds, split_calibration, validate
from tests.support.files import save, save_external
from tests.support.graphs import classifier

FAST = {"repeats": 3, "warmup": 1, "min_time_s": 0.0}


@pytest.fixture
def labelled(tmp_path):
    x = np.random.default_rng(0).standard_normal((40, 4)).astype(np.float32)
    labels = np.random.default_rng(1).integers(0, 3, 40)
    np.savez(tmp_path / "d.npz", x=x, labels=labels)
    return tmp_path / "d.npz"


def _get(report, dotted):
    node = report
    for part in dotted.split("."):
        node = node[part]
    return node


GATE_KEYS = [
    "size.size_ratio",
    "size.params_ratio",
    "latency.cpu.ratio",
    "latency.cpu.candidate.median_ms",
    "latency.cpu.status",
    "fidelity.cosine",
    "fidelity.max_abs_error",
    "fidelity.rel_error",
    "fidelity.top1_agreement",
    "fidelity.accuracy.candidate",
    "fidelity.accuracy.drop",
]


def test_identical_copy(tmp_path, labelled):
    base = save_external(classifier(), tmp_path / "base.onnx", location="base.bin")
    cand = save_external(classifier(), tmp_path / "cand.onnx", location="cand.bin")
    model = classifier()
    ds = load_feeds(labelled, model, batch_size=8)
    _, ev = split_calibration(ds)
    msgs: list[str] = []
    r = validate(base, cand, ev, providers="cpu,cuda", progress=msgs.append, **FAST)
    for key in GATE_KEYS:
        _get(r, key)  # every key the gate reads exists
    assert r["data"] == {
        "source": str(labelled),
        "samples": 24,
        "feeds": 3,
        "synthetic": False,
        "role": "evaluation",
        "warnings": [],
    }
    assert r["size"]["size_ratio"] == pytest.approx(1.0, abs=0.05) and r["size"]["params_ratio"] == 1.0
    assert r["size"]["baseline"]["external_files"] == ["base.bin"]
    assert r["latency"]["cpu"]["status"] == "ok" and r["latency"]["cpu"]["ratio"] > 0
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        assert r["latency"]["cuda"]["status"] == "unavailable" and r["latency"]["cuda"]["reason"]
    f = r["fidelity"]
    assert f["status"] == "ok" and f["cosine"] == pytest.approx(1.0) and f["max_abs_error"] == 0.0
    assert f["rel_error"] == 0.0 and f["top1_agreement"] == 1.0 and f["accuracy"]["drop"] == 0.0
    assert msgs
    json.dumps(r, allow_nan=False)  # plain JSON types only


def test_perturbed_copy(tmp_path, labelled):
    base = save(classifier(), tmp_path / "base.onnx")
    cand = save(classifier(perturb=0.5), tmp_path / "cand.onnx")
    ds = load_feeds(labelled, classifier())
    r = validate(base, cand, ds, measure_latency=False)
    assert r["latency"] == {"cpu": {"status": "skipped", "reason": "latency measurement switched off"}}
    f = r["fidelity"]
    assert 0.0 < f["cosine"] < 1.0 and f["max_abs_error"] > 0 and f["rel_error"] > 0
    assert f["top1_agreement"] <= 1.0 and f["accuracy"]["drop"] == pytest.approx(
        f["accuracy"]["baseline"] - f["accuracy"]["candidate"]
    )


def test_synthetic_data_flagged(tmp_path):
    base = save(classifier(), tmp_path / "base.onnx")
    ds = load_feeds(None, classifier(), max_samples=4)
    r = validate(base, base, ds, measure_latency=False)
    assert r["data"]["synthetic"] and r["data"]["source"] is None and r["data"]["warnings"]
    assert "accuracy" not in r["fidelity"]


def test_candidate_failure_is_reported_not_raised(tmp_path):
    base = save(classifier(), tmp_path / "base.onnx")
    cand = save(classifier(classes=2), tmp_path / "cand.onnx")  # different output shape
    ds = load_feeds(None, classifier(), max_samples=2)
    f = validate(base, cand, ds, measure_latency=False)["fidelity"]
    assert f["status"] == "failed" and "output 'logits'" in f["error"] and f["cosine"] is None
    broken = tmp_path / "broken.onnx"
    shutil.copy(base, broken)
    broken.write_bytes(broken.read_bytes()[:40])
    with pytest.raises(InvalidModelError, match="broken.onnx"):  # size cannot read it either
        validate(base, broken, ds, measure_latency=False)


def test_baseline_that_cannot_run_on_data_is_usage_error(tmp_path):
    base = save(classifier(), tmp_path / "base.onnx")
    ds = load_feeds(None, classifier(in_dim=5), max_samples=1)  # data shaped for another model
    with pytest.raises(UsageError, match="baseline model .*base.onnx.* cannot run on the data"):
        validate(base, base, ds, measure_latency=False)


def test_bench_single(tmp_path):
    path = save(classifier(), tmp_path / "m.onnx")
    r = bench_single(path, load_feeds(None, classifier(), max_samples=2), "cpu,tensorrt", **FAST)
    assert set(r) == {"data", "size", "latency"} and r["size"]["params"] == 15
    cpu = r["latency"]["cpu"]
    assert cpu["status"] == "ok" and cpu["median_ms"] > 0 and cpu["runs"] == 3
    if "TensorrtExecutionProvider" not in ort.get_available_providers():
        assert r["latency"]["tensorrt"]["status"] == "unavailable"
