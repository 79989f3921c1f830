"""Interleaved timer: call order, counts, stats from known samples, and real CPU sessions."""

from __future__ import annotations

import numpy as np
import pytest

from onnxshrink.errors import UsageError
from onnxshrink.validate.latency import (
    SPREAD_LIMIT,
    interleave,
    measure_latency,
    measure_latency_single,
    spread_warning,
    summarize,
    time_one,
)
from tests.support.files import save
from tests.support.graphs import classifier


def test_interleave_order_and_counts():
    calls: list[str] = []
    ta, tb = interleave(lambda: calls.append("A"), lambda: calls.append("B"), warmup=2, repeats=5)
    assert calls == ["A", "B"] * 7  # 2 warm-up rounds then 5 timed rounds, strictly alternating
    assert len(ta) == len(tb) == 5 and all(t >= 0 for t in ta + tb)


def test_interleave_with_fake_clock_measures_each_call():
    t = [0]  # a fake clock in ns that only the callables advance

    def clock():
        return t[0]

    def fa():
        t[0] += 3_000_000  # A costs 3 ms

    def fb():
        t[0] += 1_000_000  # B costs 1 ms

    ta, tb = interleave(fa, fb, warmup=1, repeats=4, clock=clock)
    assert ta == [3_000_000] * 4 and tb == [1_000_000] * 4


def test_interleave_min_time_adds_rounds_up_to_cap():
    t = [0]

    def fa():
        t[0] += 10_000_000  # 10 ms per A

    ta, _ = interleave(fa, lambda: None, warmup=0, repeats=2, min_time_s=0.05, clock=lambda: t[0])
    assert len(ta) == 5  # 5 × 10 ms reaches 50 ms
    ta, _ = interleave(fa, lambda: None, warmup=0, repeats=2, min_time_s=10, max_repeats=7, clock=lambda: t[0])
    assert len(ta) == 7


def test_interleave_real_callables_of_different_cost():
    cheap = lambda: sum(range(10))  # noqa: E731
    dear = lambda: sum(range(20000))  # noqa: E731
    ta, tb = interleave(cheap, dear, warmup=1, repeats=9)
    assert len(ta) == len(tb) == 9  # no tight timing assertion: machines are noisy
    assert len(time_one(cheap, 0, 4)) == 4
    with pytest.raises(UsageError):
        interleave(cheap, dear, repeats=0)


def test_summarize_known_samples():
    ns = [int(v * 1e6) for v in [5, 1, 4, 2, 3, 10, 6, 7, 9, 8]]  # 1..10 ms
    s = summarize(ns)
    assert s["median_ms"] == pytest.approx(5.5)
    assert s["p90_ms"] == pytest.approx(9.1)  # linear: 9 + 0.1 × (10 - 9)
    assert s["min_ms"] == pytest.approx(1.0)
    assert s["spread"] == pytest.approx((9.1 - 5.5) / 5.5)
    assert s["runs"] == 10
    flat = summarize([2_000_000] * 4)
    assert flat["spread"] == 0.0 and flat["median_ms"] == 2.0


def test_spread_warning():
    assert spread_warning({"baseline": {"spread": 0.1}, "candidate": {"spread": SPREAD_LIMIT}}) is None
    w = spread_warning({"baseline": {"spread": 0.1}, "candidate": {"spread": 0.5}})
    assert "candidate 50%" in w and "baseline" not in w


def test_measure_latency_cpu_pair_and_single(tmp_path):
    a = save(classifier(), tmp_path / "a.onnx")
    b = save(classifier(perturb=0.1), tmp_path / "b.onnx")
    feeds = [{"x": np.ones((2, 4), np.float32)}, {"x": np.zeros((3, 4), np.float32)}]
    msgs: list[str] = []
    r = measure_latency(
        a, b, feeds, "cpu", threads=1, warmup=2, repeats=5, min_time_s=0, progress=msgs.append, ci_width=None
    )["cpu"]
    assert r["status"] == "ok" and r["threads"] == 1 and msgs
    assert r["rounds"] == 5 and r["sessions"] == 1 and r["stopped"] == "fixed rounds"
    lo, hi = r["ratio_ci"]
    assert 0 < lo <= r["ratio"] <= hi
    for role in ("baseline", "candidate"):
        m = r[role]
        assert m["runs"] == 5 and 0 < m["min_ms"] <= m["median_ms"] <= m["p90_ms"]
        assert len(m["times_ms"]) == 5 and m["median_ci_ms"][0] <= m["median_ms"] <= m["median_ci_ms"][1]
        assert m["providers_used"] == ["CPUExecutionProvider"] and m["nodes_by_provider"]["CPUExecutionProvider"] >= 1
        assert "engine_build_s" not in m and "fallback_nodes" not in m
    assert r["warning"] is None or "noisy" in r["warning"]
    s = measure_latency_single(a, feeds, ["cpu"], repeats=3, min_time_s=0)["cpu"]
    assert s["status"] == "ok" and s["runs"] == 3 and s["median_ms"] > 0 and "ratio" not in s


def test_failed_session_and_run_are_reported(tmp_path):
    good = save(classifier(), tmp_path / "a.onnx")
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx model")
    feed = {"x": np.ones((1, 4), np.float32)}
    r = measure_latency(good, broken, [feed], ["cpu"], repeats=2, min_time_s=0)["cpu"]
    assert r["status"] == "failed" and r["error"].startswith("candidate session on cpu:") and "\n" not in r["error"]
    wrong_feed = {"x": np.ones((1, 5), np.float32)}
    r = measure_latency(good, good, [wrong_feed], ["cpu"], repeats=2, min_time_s=0)["cpu"]
    assert r["status"] == "failed" and r["error"].startswith("baseline run on cpu:")
    assert "median_ms" not in str(r)
