"""Re-timing the candidates, one at a time, each interleaved against the baseline (A B A B ...).

Trials run in parallel and contended cores lie, so no trial times anything; after the search the
candidates worth choosing from are timed here, one after the other, with
``onnxshrink.validate.latency.measure_latency`` on the first evaluation feed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..validate.latency import measure_latency

# More and longer rounds than a shrink run's default: the choice between candidates rests on them.
REPEATS = 30
MIN_TIME_S = 0.5


def evaluation_feeds(model: str | Path, data: str | Path | None, input_shapes: dict[str, Any], seed: int) -> list[dict]:
    from ..model_io import load_model
    from ..validate.data import load_feeds, split_calibration

    proto = load_model(model, load_external=False).model
    dataset = load_feeds(str(data) if data else None, proto, input_shapes={k: tuple(v) for k, v in input_shapes.items()} or None, seed=seed)
    return split_calibration(dataset)[1].feeds


def time_candidates(
    baseline: str | Path,
    candidates: list[tuple[int, str | Path]],
    feeds: list[dict],
    providers: list[str],
    *,
    threads: int = 1,
    repeats: int = REPEATS,
    min_time_s: float = MIN_TIME_S,
) -> dict[int, dict[str, Any]]:
    """``{trial number: validation.latency section}`` for each candidate, timed one after the other."""
    return {
        number: measure_latency(baseline, path, feeds, providers, threads=threads, repeats=repeats, min_time_s=min_time_s)
        for number, path in candidates
    }


def latency_ratios(latency: dict[str, Any]) -> dict[str, float | None]:
    """``{provider: ratio}`` (None where the provider could not be timed)."""
    return {ep: entry.get("ratio") if entry.get("status") == "ok" else None for ep, entry in latency.items()}
