"""Re-timing the candidates, one at a time, each interleaved against the baseline (A B A B ...).

Trials run in parallel and contended cores lie, so no trial times anything; after the search the
candidates worth choosing from are timed here, one after the other, with
``onnxshrink.validate.latency.measure_latency`` on the first evaluation feed.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from onnxshrink.ir.io import load_model
from onnxshrink.validate.data import load_feeds, split_calibration
from onnxshrink.validate.latency import measure_latency
from onnxshrink.validate.providers import make_session

# More and longer rounds than a shrink run's default when time allows: the choice rests on them.
REPEATS = 30
MIN_REPEATS = 5
MIN_TIME_S = 0.5
WARMUP = 2


def evaluation_feeds(model: str | Path, data: str | Path | None, input_shapes: dict[str, Any], seed: int) -> list[dict]:
    proto = load_model(model, load_external=False).model
    dataset = load_feeds(
        str(data) if data else None,
        proto,
        input_shapes={k: tuple(v) for k, v in input_shapes.items()} or None,
        seed=seed,
    )
    return split_calibration(dataset)[1].feeds


def rounds_for(baseline: str | Path, feed: dict, threads: int, seconds: float | None) -> int:
    """Timed rounds (A and B) that fit ``seconds`` per candidate, between MIN_REPEATS and REPEATS,
    from one warm baseline run on CPU (None: REPEATS)."""
    if seconds is None:
        return REPEATS

    session = make_session(baseline, "cpu", threads=threads).session
    session.run(None, feed)
    started = time.perf_counter()
    session.run(None, feed)
    one = max(time.perf_counter() - started, 1e-6)
    return int(min(max(seconds / (2 * one) - WARMUP, MIN_REPEATS), REPEATS))


def time_candidates(
    baseline: str | Path,
    candidates: list[tuple[int, str | Path]],
    feeds: list[dict],
    providers: list[str],
    *,
    threads: int = 1,
    seconds: float | None = None,
) -> dict[int, dict[str, Any]]:
    """``{trial number: validation.latency section}`` for each candidate, timed one after the other;
    ``seconds``: the time left for all of them (fewer rounds when it is short)."""
    if not candidates:
        return {}
    per_candidate = seconds / len(candidates) if seconds is not None else None
    repeats = rounds_for(baseline, feeds[0], threads, per_candidate)
    min_time = MIN_TIME_S if repeats == REPEATS else 0.0
    return {
        number: measure_latency(
            baseline, path, feeds, providers, threads=threads, warmup=WARMUP, repeats=repeats, min_time_s=min_time
        )
        for number, path in candidates
    }


def latency_ratios(latency: dict[str, Any]) -> dict[str, float | None]:
    """``{provider: ratio}`` (None where the provider could not be timed)."""
    return {ep: entry.get("ratio") if entry.get("status") == "ok" else None for ep, entry in latency.items()}
