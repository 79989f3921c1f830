"""Latency per execution provider: baseline and candidate timed interleaved, judged by an interval.

Method: sessions with fixed intra-op threads, one inter-op thread and sequential execution. Both models
run on the same feed: the first one given, so that feeds of different shapes add no noise. Rounds run
the two models back to back in alternating order (A B, B A, ...: neither always runs second, after
the other warmed the caches); each round gives one paired ratio ``candidate time / baseline time``.

Clock (``timing_clock``, reported as ``clock``): on the CPU provider with one intra-op thread (the
default) each run is timed with the calling thread's CPU clock (``time.thread_time_ns``):
onnxruntime runs the whole inference in the calling thread then, so time the OS gives to other
processes on a shared machine is not counted (measured here on a 2-core machine at load 16: wall
p90 21.8 ms against CPU-time p90 1.5 ms for a 1.2 ms model). Otherwise the wall clock
(``time.perf_counter_ns``).

Session pairs (``session_blocks``): rounds are grouped in blocks, each on a fresh pair of sessions
created in alternating order (one session's memory layout can make it a few percent faster or slower
for its whole life, as pyperf found for processes). A block runs warm-up rounds, then at least
``repeats / MIN_BLOCKS`` rounds and ``MIN_BLOCK_S`` of wall time.

The ratio and its 95% confidence interval (``ratio_interval``): ``ratio`` is the median of all paired
ratios (taken in log space); ``ratio_ci = [lo, hi]`` is a percentile bootstrap interval of it from a
fixed-seed RNG, two-stage over the blocks (blocks drawn with replacement, then rounds inside each), so
the differences between session pairs widen it as they should; with one block, a moving-block
bootstrap over the rounds. Pairing cancels what both models share, and the median ignores the runs an
interruption spoils. As in pyperf's and asv's significance checks, a difference is reported as a
range, and a judge (the gate) only acts on a range that lies clear of its threshold.

Stopping rule: after each block, stop when at least ``repeats`` rounds, ``min_time_s`` and
``MIN_BLOCKS`` blocks are done and the interval's half-width is within ``ci_width`` of the ratio
(default ±2%: ``stopped = "converged"``); or when ``time_budget_s`` of wall time has passed since
timing began (``"time budget"``; a ``warning`` says the interval is wider than asked); or after
``max_repeats`` rounds (``"max rounds"``). ``ci_width=None`` times exactly ``repeats`` rounds on one
pair (``"fixed rounds"``).

The first warm-up run of each first session is profiled to count the nodes each provider ran
(``nodes_by_provider``; nodes outside the requested provider are ``fallback_nodes``).
``session_create_s`` and ``first_run_s`` are recorded per model; for TensorRT ``engine_build_s`` is
their sum (onnxruntime builds engines for dynamic shapes at the first run), and a warm engine cache
in ``trt_cache_dir`` makes it small.

Statistics per model: ``median_ms`` with its bootstrap interval ``median_ci_ms``, ``p90_ms``
(linear-interpolated 90th percentile), ``min_ms``, ``runs``, ``times_ms`` (every timed run, in
order, paired by index with the other model's) and ``spread = (p90 - median) / median``. A
``warning`` is also set when either model's spread exceeds ``SPREAD_LIMIT`` (0.25).

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
from onnxshrink.validate.providers import (
    PROVIDERS,
    Session,
    make_session,
    parse_providers,
    placement_from_profile,
    provider_status,
)

SPREAD_LIMIT = 0.25
DEFAULT_WARMUP = 3
DEFAULT_REPEATS = 20
DEFAULT_MIN_TIME_S = 0.2
DEFAULT_MAX_REPEATS = 2000
DEFAULT_CI_WIDTH = 0.02  # stop when the 95% interval is within ±2% of the ratio
DEFAULT_TIME_BUDGET_S = 10.0  # ... or when this much timing has been done (per provider)
CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0
MIN_BLOCKS = 4  # fresh session pairs before the interval may be called converged
MIN_BLOCK_S = 0.5  # each session pair is timed for at least this long (wall clock)

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


def block_length(n: int) -> int:
    """Block length of the moving-block bootstrap for ``n`` rounds: about n^(1/3), at least 1."""
    return max(1, int(round(n ** (1 / 3))))


def bootstrap_medians(
    values: Sequence[float], *, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED
) -> np.ndarray:
    """Medians of ``resamples`` moving-block bootstrap resamples of ``values`` (a fixed-seed RNG)."""
    x = np.asarray(values, dtype=np.float64)
    n = x.size
    if n == 0:
        raise ValueError("no values to resample")
    length = block_length(n)
    blocks = -(-n // length)
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, n - length + 1, size=(resamples, blocks))
    index = (starts[:, :, None] + np.arange(length)).reshape(resamples, -1)[:, :n]
    return np.median(x[index], axis=1)


def median_interval(
    values: Sequence[float],
    confidence: float = CONFIDENCE,
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[float, float]:
    """Percentile bootstrap interval ``(lo, hi)`` of the median of ``values``."""
    tail = (1 - confidence) / 2
    lo, hi = np.quantile(bootstrap_medians(values, resamples=resamples, seed=seed), [tail, 1 - tail])
    return float(lo), float(hi)


def cluster_medians(
    values: Sequence[float], groups: Sequence[int], *, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED
) -> np.ndarray:
    """Medians of ``resamples`` two-stage bootstrap resamples: groups drawn with replacement, then the
    values inside each drawn group drawn with replacement (a fixed-seed RNG)."""
    x = np.asarray(values, dtype=np.float64)
    g = np.asarray(groups)
    if x.size == 0 or g.shape != x.shape:
        raise ValueError(f"need one group label per value, got {g.shape} for {x.shape}")
    members = [x[g == label] for label in dict.fromkeys(g.tolist())]
    rng = np.random.default_rng(seed)
    out = np.empty(resamples)
    for r in range(resamples):
        picked = rng.integers(0, len(members), len(members))
        out[r] = np.median(
            np.concatenate([members[k][rng.integers(0, members[k].size, members[k].size)] for k in picked])
        )
    return out


def ratio_interval(
    baseline_ns: Sequence[float],
    candidate_ns: Sequence[float],
    confidence: float = CONFIDENCE,
    *,
    groups: Sequence[int] | None = None,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[float, float, float]:
    """``(ratio, lo, hi)``: ``ratio`` is the median of the paired ratios candidate_i / baseline_i (taken
    in log space) over every round; ``[lo, hi]`` its percentile bootstrap interval from a fixed-seed
    RNG. With several ``groups`` (the session pair of each round) the bootstrap is two-stage: whole
    groups are drawn with replacement, then rounds inside each drawn group, so that the differences
    between session pairs widen the interval as they should; with one group, a moving-block bootstrap
    over the rounds. The pooled median keeps one disturbed group from moving the ratio much.
    Deterministic for given timings and seed."""
    b = np.asarray(baseline_ns, dtype=np.float64)
    c = np.asarray(candidate_ns, dtype=np.float64)
    if b.shape != c.shape or b.ndim != 1 or b.size == 0:
        raise ValueError(f"need two equally long, non-empty timing series, got {b.shape} and {c.shape}")
    if (b <= 0).any() or (c <= 0).any():
        raise ValueError("timings must be positive to form ratios")
    log_ratios = np.log(c) - np.log(b)
    tail = (1 - confidence) / 2
    if groups is not None and len(set(groups)) > 1:
        medians = cluster_medians(log_ratios, groups, resamples=resamples, seed=seed)
    else:
        medians = bootstrap_medians(log_ratios, resamples=resamples, seed=seed)
    lo, hi = np.quantile(medians, [tail, 1 - tail])
    return float(np.exp(np.median(log_ratios))), float(np.exp(lo)), float(np.exp(hi))


def relative_half_width(ratio: float, lo: float, hi: float) -> float:
    """Half the interval's width relative to the ratio: 0.02 means ±2%."""
    return (hi - lo) / 2 / ratio if ratio > 0 else float("inf")


def session_blocks(
    new_pair: Callable[[int], tuple[Callable[[], object], Callable[[], object]]],
    warmup: int = DEFAULT_WARMUP,
    repeats: int = DEFAULT_REPEATS,
    *,
    ci_width: float | None = DEFAULT_CI_WIDTH,
    time_budget_s: float = DEFAULT_TIME_BUDGET_S,
    min_time_s: float = 0.0,
    max_repeats: int = DEFAULT_MAX_REPEATS,
    min_blocks: int = MIN_BLOCKS,
    min_block_s: float = MIN_BLOCK_S,
    clock: Clock = time.perf_counter_ns,
    wall: Clock | None = None,
) -> tuple[list[int], list[int], list[int], str]:
    """Time A and B in blocks, each on a fresh pair of callables from ``new_pair(block)`` (fresh
    sessions: one session's memory layout can make it a few percent faster or slower for its whole
    life, as pyperf found for processes), rounds alternating A B / B A inside a block.

    A block runs ``warmup`` untimed rounds, then at least ``repeats / min_blocks`` rounds and
    ``min_block_s``. After each block: stop when at least ``repeats`` rounds, ``min_time_s`` and
    ``min_blocks`` blocks are done and the ratio's interval is within ``ci_width`` (``"converged"``),
    when ``time_budget_s`` has passed (``"time budget"``) or after ``max_repeats`` rounds (``"max
    rounds"``). ``ci_width=None``: one block of exactly ``repeats`` rounds (``"fixed rounds"``).
    ``clock`` times the calls; ``wall`` (default: ``clock``) measures blocks, ``min_time_s`` and the budget.
    Returns ns per call of A and of B, the block of each round, and why it stopped."""
    wall = wall or clock
    if repeats < 1 or warmup < 0:
        raise UsageError(f"repeats must be >= 1 and warm-up >= 0, got repeats={repeats}, warmup={warmup}")
    if ci_width is not None and not ci_width > 0:
        raise UsageError(f"the interval width to reach must be > 0, got {ci_width}")
    times_a: list[int] = []
    times_b: list[int] = []
    groups: list[int] = []
    cap = max(max_repeats, repeats)
    per_block = repeats if ci_width is None else max(3, -(-repeats // max(min_blocks, 1)))
    start = wall()
    block = 0
    while True:
        fa, fb = new_pair(block)
        for _ in range(warmup):
            fa()
            fb()
        block_start = wall()
        done = 0
        while True:
            pair = (fa, fb) if done % 2 == 0 else (fb, fa)
            t0 = clock()
            pair[0]()
            t1 = clock()
            pair[1]()
            t2 = clock()
            first, second = t1 - t0, t2 - t1
            times_a.append(first if done % 2 == 0 else second)
            times_b.append(second if done % 2 == 0 else first)
            groups.append(block)
            done += 1
            now = wall()
            if len(times_a) >= cap:
                break
            if ci_width is None:
                if done >= repeats and now - start >= min_time_s * 1e9:
                    break
                continue
            if done >= per_block and now - block_start >= min_block_s * 1e9:
                break
            if len(times_a) >= repeats and now - start >= time_budget_s * 1e9:
                break
        block += 1
        n, elapsed = len(times_a), wall() - start
        if ci_width is None:
            return times_a, times_b, groups, "max rounds" if n >= cap and n < repeats else "fixed rounds"
        ready = n >= repeats and elapsed >= min_time_s * 1e9
        if ready and block >= min_blocks and _positive(times_a) and _positive(times_b):
            ratio, lo, hi = ratio_interval(times_a, times_b, groups=groups)
            if relative_half_width(ratio, lo, hi) <= ci_width:
                return times_a, times_b, groups, "converged"
        if ready and wall() - start >= time_budget_s * 1e9:
            return times_a, times_b, groups, "time budget"
        if n >= cap:
            return times_a, times_b, groups, "max rounds"


def timing_clock(provider: str, threads: int) -> tuple[Clock, str]:
    """The clock runs are timed with: the calling thread's CPU clock on the CPU provider with one
    intra-op thread (onnxruntime then runs the whole inference in the calling thread, so time the OS
    gives to other processes is not counted), else the wall clock."""
    if provider == "cpu" and threads == 1:
        return time.thread_time_ns, "thread CPU time"
    return time.perf_counter_ns, "wall time"


def _positive(times: Sequence[int]) -> bool:
    return all(t > 0 for t in times)


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
    """``median_ms``, ``median_ci_ms``, ``p90_ms``, ``min_ms``, ``spread`` ((p90-median)/median), ``runs``,
    ``times_ms``."""
    if not times_ns:
        raise ValueError("no timings to summarize")
    ms = np.asarray(times_ns, dtype=np.float64) / 1e6
    median = float(np.median(ms))
    p90 = float(np.percentile(ms, 90))
    lo, hi = median_interval(ms)
    return {
        "median_ms": median,
        "median_ci_ms": [lo, hi],
        "p90_ms": p90,
        "min_ms": float(ms.min()),
        "spread": (p90 - median) / median if median > 0 else 0.0,
        "runs": int(ms.size),
        "times_ms": [round(float(v), 6) for v in ms],
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
        self.s: Session = make_session(
            model, provider, threads=threads, trt_cache_dir=cache_dir, profile_dir=profile_dir
        )
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
        out: dict = {
            "providers_used": self.s.providers_used,
            "session_create_s": self.s.create_s,
            "first_run_s": self.first_run_s,
        }
        if self.s.provider == "tensorrt":  # engines for dynamic shapes are built on the first run, not at load
            out["engine_build_s"] = self.s.create_s + self.first_run_s
        if self.nodes is not None:
            out["nodes_by_provider"] = self.nodes
            if self.s.provider != "cpu":
                out["fallback_nodes"] = sum(n for p, n in self.nodes.items() if p != PROVIDERS[self.s.provider])
        return out


def _run_provider(
    models: dict[str, str],
    feed: dict[str, np.ndarray],
    provider: str,
    threads: int,
    warmup: int,
    repeats: int,
    min_time_s: float,
    max_repeats: int,
    trt_cache_dir: str | os.PathLike | None,
    ci_width: float | None = None,
    time_budget_s: float = DEFAULT_TIME_BUDGET_S,
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
        paths = list(models.values())
        paired = len(calls) == 2
        clock, clock_name = timing_clock(provider, threads)

        def new_pair(block: int):
            if block == 0:
                return calls[0], calls[1]
            calls.clear()  # release the previous pair before loading the next
            order = [0, 1] if block % 2 == 0 else [1, 0]  # alternate which session is created first
            fresh: dict[int, object] = {}
            for i in order:
                fresh[i] = make_session(paths[i], provider, threads=threads, trt_cache_dir=cache_dir).session
            return (lambda s=fresh[0]: s.run(None, feed)), (lambda s=fresh[1]: s.run(None, feed))

        try:
            if paired:
                ta, tb, groups, stopped = session_blocks(
                    new_pair,
                    max(warmup - 1, 0),
                    repeats,
                    ci_width=ci_width,
                    time_budget_s=time_budget_s,
                    min_time_s=min_time_s,
                    max_repeats=max_repeats,
                    clock=clock,
                    wall=time.perf_counter_ns,
                )
                times = {"baseline": ta, "candidate": tb}
            else:
                times = {
                    next(iter(models)): time_one(
                        calls[0],
                        max(warmup - 1, 0),
                        repeats,
                        min_time_s=min_time_s,
                        max_repeats=max_repeats,
                        clock=clock,
                    )
                }
        except Exception as e:
            return {"status": "failed", "error": f"timed run on {provider}: {one_line(e)}"}
        per_model = {role: {**summarize(t), **prepared[role].facts()} for role, t in times.items()}
        result: dict = {"status": "ok", "threads": threads, "warmup": warmup, "clock": clock_name}
        if provider == "tensorrt":
            result["cache_dir"] = str(trt_cache_dir) if trt_cache_dir is not None else None
        result["warning"] = spread_warning(per_model)
        if paired:
            result.update(_ratio_facts(times["baseline"], times["candidate"], groups, stopped, ci_width, time_budget_s))
            if result.pop("_wide", None):
                result["warning"] = "; ".join(w for w in (result["warning"], result.pop("_wide_text")) if w)
        result["_per_model"] = per_model
        return result
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _ratio_facts(
    baseline_ns: list[int],
    candidate_ns: list[int],
    groups: list[int],
    stopped: str,
    ci_width: float | None,
    time_budget_s: float,
) -> dict:
    """``ratio``, ``ratio_ci``, ``confidence``, ``rounds``, ``stopped``, ``ci_target``, ``time_budget_s``
    (+ a private note when the time budget ended before the interval reached the width asked for)."""
    facts: dict = {
        "rounds": len(baseline_ns),
        "sessions": len(set(groups)),
        "stopped": stopped,
        "confidence": CONFIDENCE,
        "ci_target": ci_width,
        "time_budget_s": time_budget_s if ci_width is not None else None,
        "order": "alternating (A B, B A, ...)",
    }
    if not (_positive(baseline_ns) and _positive(candidate_ns)):
        return {**facts, "ratio": None, "ratio_ci": None}
    ratio, lo, hi = ratio_interval(baseline_ns, candidate_ns, groups=groups)
    facts.update(ratio=ratio, ratio_ci=[lo, hi])
    half = relative_half_width(ratio, lo, hi)
    if ci_width is not None and half > ci_width:
        facts["_wide"] = True
        facts["_wide_text"] = (
            f"the 95% interval of the ratio is ±{half:.1%}, wider than the ±{ci_width:.1%} asked for: "
            f"{stopped} after {len(baseline_ns)} rounds; a gate can only call differences larger than that"
        )
    return facts


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
    ci_width: float | None = DEFAULT_CI_WIDTH,
    time_budget_s: float = DEFAULT_TIME_BUDGET_S,
) -> dict:
    """``{provider: {"status", "baseline", "candidate", "ratio", "ratio_ci", "rounds", "stopped", "threads",
    "warning", ...}}``; never raises per provider. See the module docstring for the stopping rule."""
    feed = _first_feed(feeds)
    out: dict = {}
    for ep in parse_providers(providers):
        if progress:
            progress(f"timing baseline and candidate on {ep}")
        r = _run_provider(
            {"baseline": str(baseline_path), "candidate": str(candidate_path)},
            feed,
            ep,
            threads,
            warmup,
            repeats,
            min_time_s,
            max_repeats,
            trt_cache_dir,
            ci_width,
            time_budget_s,
        )
        per_model = r.pop("_per_model", None)
        if per_model is not None:
            r["baseline"], r["candidate"] = per_model["baseline"], per_model["candidate"]
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
        r = _run_provider(
            {"model": str(model_path)}, feed, ep, threads, warmup, repeats, min_time_s, max_repeats, trt_cache_dir
        )
        per_model = r.pop("_per_model", None)
        if per_model is not None:
            warning = r.pop("warning")
            r.update(per_model["model"])
            r["warning"] = warning
        out[ep] = r
    return out
