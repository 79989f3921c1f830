"""Execution providers: parsing, availability from what onnxruntime reports, sessions, placement."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from onnxshrink.errors import UsageError
from onnxshrink.validate.latency import measure_latency, measure_latency_single
from onnxshrink.validate.providers import PROVIDERS, make_session, node_placement, parse_providers, provider_status
from tests.support.files import save, save_external
from tests.support.graphs import classifier

AVAILABLE = ort.get_available_providers()


def test_parse_providers():
    assert parse_providers("cpu,cuda,tensorrt") == ["cpu", "cuda", "tensorrt"]
    assert parse_providers(" CPU , cpu,CUDAExecutionProvider") == ["cpu", "cuda"]
    assert parse_providers(["tensorrt"]) == ["tensorrt"]
    with pytest.raises(UsageError, match=r"unknown execution provider 'rocm'; known: cpu, cuda, tensorrt"):
        parse_providers("cpu,rocm")
    with pytest.raises(UsageError, match="no execution provider"):
        parse_providers(" , ")


def test_cpu_always_available():
    assert provider_status("cpu") == (True, None)


@pytest.mark.parametrize("name", ["cuda", "tensorrt"])
def test_accelerator_status_follows_onnxruntime(name):
    ok, reason = provider_status(name)
    assert ok == (PROVIDERS[name] in AVAILABLE)
    if ok:
        assert reason is None
    else:
        assert PROVIDERS[name] in reason and "onnxruntime-gpu" in reason


@pytest.mark.parametrize("name", ["cuda", "tensorrt"])
def test_unavailable_provider_reported_not_faked(tmp_path, name):
    if PROVIDERS[name] in AVAILABLE:
        pytest.skip(f"{PROVIDERS[name]} is available here; the unavailable path cannot be exercised")
    path = save(classifier(), tmp_path / "m.onnx")
    feed = {"x": np.ones((1, 4), np.float32)}
    pair = measure_latency(path, path, [feed], ["cpu", name], repeats=2, min_time_s=0)
    assert pair["cpu"]["status"] == "ok"
    assert pair[name] == {"status": "unavailable", "reason": provider_status(name)[1]}
    single = measure_latency_single(path, [feed], [name], repeats=2, min_time_s=0)
    assert single[name]["status"] == "unavailable" and "median_ms" not in single[name]


@pytest.mark.gpu
def test_cuda_session_when_present(tmp_path):
    if "CUDAExecutionProvider" not in AVAILABLE:
        pytest.skip("onnxruntime reports no CUDAExecutionProvider on this machine")
    path = save(classifier(), tmp_path / "m.onnx")
    r = measure_latency(path, path, [{"x": np.ones((1, 4), np.float32)}], ["cuda"], repeats=3, min_time_s=0)["cuda"]
    assert r["status"] in ("ok", "failed")
    if r["status"] == "ok":
        assert "CUDAExecutionProvider" in r["providers_used"] and r["candidate"]["median_ms"] > 0


def test_make_session_by_path_with_external_data(tmp_path):
    path = save_external(classifier(), tmp_path / "m.onnx")
    s = make_session(path, "cpu", threads=2)
    assert s.providers_used == ["CPUExecutionProvider"] and s.create_s > 0 and s.cache_dir is None
    out = s.session.run(None, {"x": np.ones((2, 4), np.float32)})[0]
    assert out.shape == (2, 3)
    with pytest.raises(UsageError, match="threads"):
        make_session(path, "cpu", threads=0)


def test_node_placement_on_cpu(tmp_path):
    path = save(classifier(with_pred=True), tmp_path / "m.onnx")
    placement = node_placement(path, "cpu", {"x": np.ones((1, 4), np.float32)})
    assert set(placement) == {"CPUExecutionProvider"} and placement["CPUExecutionProvider"] >= 2
