"""bench_tune's best single-method default on a tiny zoo built from models/ (fast; runs in `make test`)."""

from __future__ import annotations

import importlib.util
import shutil
import sys

import pytest

from onnxshrink.plugin.registry import default_registry
from tests.zoo.conftest import ROOT


@pytest.fixture(scope="module")
def bench_tune():
    name = "onnxshrink_bench_tune"
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / "bench_tune.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_best_single_default_is_the_smallest_that_passes_every_gate(bench_tune, tmp_path, monkeypatch):
    # a latency gate every candidate passes: timed for real, but the verdict does not hang on timing noise
    monkeypatch.setattr(bench_tune, "GATES", ["cosine>=0.99", "latency_ratio[cpu]<=100"])
    model, data = tmp_path / "mlp.onnx", tmp_path / "mlp.npz"
    shutil.copyfile(ROOT / "models" / "mlp.onnx", model)
    shutil.copyfile(ROOT / "models" / "mlp_eval.npz", data)
    measured = {m: bench_tune.method_default(m, model, data, tmp_path / "runs") for m in ("float16", "short_names")}
    measured["int_quant"] = bench_tune.timed(
        bench_tune.method_default("int_quant", model, data, tmp_path / "runs"), model, data
    )
    # every other installed method stands as measured and failed, so only these three compete
    known = {m: {"method": m, "status": "failed"} for m in default_registry().methods} | measured
    best = bench_tune.best_single_default(model, data, tmp_path / "runs", known)
    passing = [r for r in measured.values() if r["status"] == "ok" and r["gates_passed"]]
    assert len(passing) == 3 and best is not None and best["passed"]
    assert best["method"] == "int_quant" and best["size_ratio"] == min(r["size_ratio"] for r in passing)
    assert measured["int_quant"]["latency_ratio"] > 0
    assert "passed" not in measured["short_names"]  # a larger one is timed only when the smaller ones fail
