"""Latency per execution provider, baseline and candidate timed interleaved.

Method: one session per model and provider (fixed intra-op threads, one inter-op thread, sequential
execution). Both models run on the same feed: the first one given, so that feeds of different shapes
add no noise. After ``warmup`` rounds of (A, B), rounds of A then B are timed with
``time.perf_counter_ns`` until at least ``repeats`` rounds are done and at least ``min_time_s`` has
passed (at most ``max_repeats`` rounds). The first warm-up run of each session is profiled to count
the nodes each provider ran (``nodes_by_provider``; nodes outside the requested provider are
``fallback_nodes``). ``session_create_s`` and ``first_run_s`` are recorded per model; for TensorRT
``engine_build_s`` is their sum (onnxruntime builds engines for dynamic shapes at the first run), and
a warm engine cache in ``trt_cache_dir`` makes it small.

Statistics per model: ``median_ms``, ``p90_ms`` (linear-interpolated 90th percentile), ``min_ms``,
``runs`` and ``spread = (p90 - median) / median``. A ``warning`` is set when either model's spread
exceeds ``SPREAD_LIMIT`` (0.25): the machine was too noisy for the ratio to be trusted.
``ratio = candidate median / baseline median``.

Per provider the result is ``{"status": "ok", ...}``, ``{"status": "unavailable", "reason": ...}``
when onnxruntime does not report the provider, or ``{"status": "failed", "error": ...}`` when a
session cannot be created or a run raises. Nothing is raised and no number is made up.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from onnxshrink.errors import UsageError, one_line
from onnxshrink.validate.providers import PROVIDERS, Session, make_session, parse_providers, placement_from_profile, provider_status

SPREAD_LIMIT = 0.25
DEFAULT_WARMUP = 3
DEFAULT_REPEATS = 20
DEFAULT_MIN_TIME_S = 0.2
DEFAULT_MAX_REPEATS = 1000

Clock = Callable[[], int]


# -------------------------------------------------------------------------------------- timing core


def interleave(
    fa: Callable[[], object],
    fb: Callable[[], object],
    warmup: int = DEFAULT_WARMUP,
    repeats: int = DEFAULT_REPEATS,
    *,
    min_time_s: float = 0.0,
    max_repeats: int = DEFAULT_MAX_REPEATS,
    clock: Clock = time.perf_counter_ns,
) -> tuple[list[int], list[int]]:
    """Call A, B, A, B, ...: ``warmup`` untimed rounds, then timed rounds; returns ns per call of each."""
    if repeats < 1 or warmup < 0:
        raise UsageError(f"repeats must be >= 1 and warm-up >= 0, got repeats={repeats}, warmup={warmup}")
    for _ in range(warmup):
        fa()
        fb()
    times_a: list[int] = []
    times_b: list[int] = []
    start = clock()
    limit_ns = int(min_time_s * 1e9)
    while True:
        t0 = clock()
        fa()
        t1 = clock()
        fb()
        t2 = clock()
        times_a.append(t1 - t0)
        times_b.append(t2 - t1)
        n = len(times_a)
        if n >= repeats and (t2 - start >= limit_ns or n >= max(max_repeats, repeats)):
            return times_a, times_b


def time_one(
    f: Callable[[], object],
    warmup: int = DEFAULT_WARMUP,
    repeats: int = DEFAULT_REPEATS,
    *,
    min_time_s: float = 0.0,
    max_repeats: int = DEFAULT_MAX_REPEATS,
    clock: Clock = time.perf_counter_ns,
) -> list[int]:
    """Time one callable the same way as ``interleave`` (ns per call)."""
    return interleave(f, lambda: None, warmup, repeats, min_time_s=min_time_s, max_repeats=max_repeats, clock=clock)[0]


def summarize(times_ns: Sequence[int]) -> dict:
    """``median_ms``, ``p90_ms``, ``min_ms``, ``spread`` ((p90-median)/median) and ``runs``."""
    if not times_ns:
        raise ValueError("no timings to summarize")
    ms = np.asarray(times_ns, dtype=np.float64) / 1e6
    median = float(np.median(ms))
    p90 = float(np.percentile(ms, 90))
    return {
        "median_ms": median,
        "p90_ms": p90,
        "min_ms": float(ms.min()),
        "spread": (p90 - median) / median if median > 0 else 0.0,
        "runs": int(ms.size),
    }


def spread_warning(stats: dict[str, dict]) -> str | None:
    """A warning naming the models whose spread exceeds ``SPREAD_LIMIT``, else None."""
    wide = [f"{name} {s['spread']:.0%}" for name, s in stats.items() if s["spread"] > SPREAD_LIMIT]
    if not wide:
        return None
    return (
        f"timings too noisy to trust: (p90 - median) / median is {', '.join(wide)} (limit {SPREAD_LIMIT:.0%}); "
        "rerun on an idle machine or with more repeats"
    )


# -------------------------------------------------------------------------------------- with ORT




def _first_feed(feeds) -> dict[str, np.ndarray]:
    if isinstance(feeds, dict):
        return feeds
    feeds = list(feeds)
    if not feeds:
        raise UsageError("no input feeds to time the model with")
    return feeds[0]


class _Prepared:
    """A session, profiled on its first run, plus the per-model facts for the report."""

    def __init__(self, model: str, provider: str, threads: int, cache_dir: str | None, profile_dir: str):
        self.s: Session = make_session(model, provider, threads=threads, trt_cache_dir=cache_dir, profile_dir=profile_dir)
        self.nodes: dict[str, int] | None = None
        self.first_run_s = 0.0

    def first_run(self, feed: dict[str, np.ndarray]) -> None:
        t0 = time.perf_counter()
        self.s.session.run(None, feed)
        self.first_run_s = time.perf_counter() - t0
        profile = self.s.session.end_profiling()
        try:
            self.nodes = placement_from_profile(profile) if profile else None
        except (OSError, ValueError):
            self.nodes = None

    def facts(self) -> dict:
        out: dict = {"providers_used": self.s.providers_used, "session_create_s": self.s.create_s, "first_run_s": self.first_run_s}
        if self.s.provider == "tensorrt":  # engines for dynamic shapes are built on the first run, not at load
            out["engine_build_s"] = self.s.create_s + self.first_run_s
        if self.nodes is not None:
            out["nodes_by_provider"] = self.nodes
            if self.s.provider != "cpu":
                out["fallback_nodes"] = sum(n for p, n in self.nodes.items() if p != PROVIDERS[self.s.provider])
        return out


def _run_provider(
    models: dict[str, str], feed: dict[str, np.ndarray], provider: str, threads: int, warmup: int, repeats: int,
    min_time_s: float, max_repeats: int, trt_cache_dir: str | os.PathLike | None,
) -> dict:
    ok, reason = provider_status(provider)
    if not ok:
        return {"status": "unavailable", "reason": reason}
    tmp = tempfile.mkdtemp(prefix="onnxshrink_lat_")
    cache_dir = None
    if provider == "tensorrt":
        cache_dir = str(Path(trt_cache_dir).resolve()) if trt_cache_dir is not None else os.path.join(tmp, "trt_cache")
    try:
        prepared: dict[str, _Prepared] = {}
        for role, path in models.items():
            stage = f"{role} session"
            try:
                prepared[role] = _Prepared(path, provider, threads, cache_dir, tmp)
                stage = f"{role} run"
                prepared[role].first_run(feed)
            except Exception as e:
                return {"status": "failed", "error": f"{stage} on {provider}: {one_line(e)}"}
        calls = [lambda s=p.s.session: s.run(None, feed) for p in prepared.values()]
        try:
            if len(calls) == 2:
                ta, tb = interleave(calls[0], calls[1], max(warmup - 1, 0), repeats, min_time_s=min_time_s, max_repeats=max_repeats)
                times = {"baseline": ta, "candidate": tb}
            else:
                times = {next(iter(models)): time_one(calls[0], max(warmup - 1, 0), repeats, min_time_s=min_time_s, max_repeats=max_repeats)}
        except Exception as e:
            return {"status": "failed", "error": f"timed run on {provider}: {one_line(e)}"}
        per_model = {role: {**summarize(t), **prepared[role].facts()} for role, t in times.items()}
        result: dict = {"status": "ok", "threads": threads, "warmup": warmup}
        if provider == "tensorrt":
            result["cache_dir"] = str(trt_cache_dir) if trt_cache_dir is not None else None
        result["warning"] = spread_warning(per_model)
        result["_per_model"] = per_model
        return result
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def measure_latency(
    baseline_path: str | os.PathLike,
    candidate_path: str | os.PathLike,
    feeds: Sequence[dict[str, np.ndarray]] | dict[str, np.ndarray],
    providers: str | Sequence[str] = ("cpu",),
    *,
    threads: int = 1,
    warmup: int = DEFAULT_WARMUP,
    repeats: int = DEFAULT_REPEATS,
    min_time_s: float = DEFAULT_MIN_TIME_S,
    max_repeats: int = DEFAULT_MAX_REPEATS,
    trt_cache_dir: str | os.PathLike | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """``{provider: {"status", "baseline", "candidate", "ratio", "threads", "warning", ...}}``; never raises per provider."""
    feed = _first_feed(feeds)
    out: dict = {}
    for ep in parse_providers(providers):
        if progress:
            progress(f"timing baseline and candidate on {ep}")
        r = _run_provider(
            {"baseline": str(baseline_path), "candidate": str(candidate_path)}, feed, ep, threads, warmup, repeats,
            min_time_s, max_repeats, trt_cache_dir,
        )
        per_model = r.pop("_per_model", None)
        if per_model is not None:
            r["baseline"], r["candidate"] = per_model["baseline"], per_model["candidate"]
            b, c = r["baseline"]["median_ms"], r["candidate"]["median_ms"]
            r["ratio"] = c / b if b > 0 else None
            r["providers_used"] = r["candidate"]["providers_used"]
        out[ep] = r
    return out


def measure_latency_single(
    model_path: str | os.PathLike,
    feeds: Sequence[dict[str, np.ndarray]] | dict[str, np.ndarray],
    providers: str | Sequence[str] = ("cpu",),
    *,
    threads: int = 1,
    warmup: int = DEFAULT_WARMUP,
    repeats: int = DEFAULT_REPEATS,
    min_time_s: float = DEFAULT_MIN_TIME_S,
    max_repeats: int = DEFAULT_MAX_REPEATS,
    trt_cache_dir: str | os.PathLike | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """``{provider: {"status", "median_ms", "p90_ms", "min_ms", "spread", "runs", "providers_used", ...}}``."""
    feed = _first_feed(feeds)
    out: dict = {}
    for ep in parse_providers(providers):
        if progress:
            progress(f"timing model on {ep}")
        r = _run_provider({"model": str(model_path)}, feed, ep, threads, warmup, repeats, min_time_s, max_repeats, trt_cache_dir)
        per_model = r.pop("_per_model", None)
        if per_model is not None:
            warning = r.pop("warning")
            r.update(per_model["model"])
            r["warning"] = warning
        out[ep] = r
    return out
