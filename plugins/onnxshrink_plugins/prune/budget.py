"""Prune as far as a fidelity budget allows: measure each tensor's sensitivity, order the cuts, search.

1. Sensitivity (on the *ranking* feeds): each tensor alone is pruned to each of :data:`PROBES` and
   the drop ``1 - worst per-feed cosine`` of the model's outputs is measured (2 runs per tensor).
   Between and beyond those points the drop is interpolated linearly in the share of the tensor's
   squared magnitude the cut removes (which is known for every sparsity without running anything).
2. Order: starting from nothing pruned, the next step is always the (tensor, level) move of
   :data:`LEVELS` that removes the most weights per unit of predicted drop.
3. Search (on the *judging* feeds, held back from step 1): the longest prefix of that order whose
   worst per-feed cosine stays at or above the budget, by bisection on a few judging feeds from the
   prefix the predictions say fits, confirmed on all of them. The tensor whose step broke the budget
   is frozen at its level and the search goes on with the others, for :data:`MAX_ROUNDS` rounds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

import onnxshrink

from .probe import SwappableSession

LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
PROBES = (0.5, 0.9)
QUICK_FEEDS = 4  # judging feeds each bisection step runs
QUICK_RUNS = 16  # bisection steps in all rounds together
MAX_ROUNDS = 3  # rounds of: bisect, confirm on every judging feed, freeze the tensor that broke the budget


@dataclass
class Candidate:
    """One prunable tensor: its values, its magnitude profile and its measured sensitivity."""

    weight: onnxshrink.WeightTensor
    values: np.ndarray
    order: np.ndarray = field(init=False, repr=False)  # flat positions by increasing |w| (ties: earliest first)
    min_level: float = 0.0  # the lowest sparsity worth having (below it, the bitmask form would not be smaller)
    stored_bytes: dict[float, int] = field(default_factory=dict)  # sparsity -> bytes of the bitmask form
    dense_bytes: int = 0
    removed_energy: dict[float, float] = field(default_factory=dict)  # sparsity -> share of sum(w^2) removed
    measured: dict[float, float] = field(default_factory=dict)  # probe sparsity -> 1 - worst cosine

    def __post_init__(self) -> None:
        self.order = np.argsort(np.abs(self.values.reshape(-1).astype(np.float32)), kind="stable")

    @property
    def name(self) -> str:
        return self.weight.name

    def cut(self, sparsity: float) -> np.ndarray:
        """The values with the round(sparsity * n) smallest |w| set to zero."""
        flat = self.values.reshape(-1).copy()
        flat[self.order[: int(round(sparsity * flat.size))]] = 0
        return flat.reshape(self.values.shape)

    def predicted_drop(self, sparsity: float) -> float:
        """The drop at ``sparsity``: linear in the removed energy through (0, 0) and the probes."""
        xs = [0.0] + [self.removed_energy[p] for p in PROBES]
        ys = [0.0] + [max(self.measured[p], 0.0) for p in PROBES]
        ys = list(np.maximum.accumulate(ys))
        x = self.removed_energy[sparsity]
        if x <= xs[-1] or xs[-1] <= xs[-2]:
            drop = float(np.interp(x, xs, ys))
        else:
            slope = (ys[-1] - ys[-2]) / (xs[-1] - xs[-2])
            drop = ys[-1] + slope * (x - xs[-1])
        return drop + 1e-9 * x  # a tie-break: among tensors that measured no drop, cut the low-energy ones first


def removed_energy(values: np.ndarray, sparsities: Sequence[float]) -> dict[float, float]:
    squares = np.sort(np.square(values.astype(np.float64).ravel()))
    total = float(squares.sum())
    cumulative = np.concatenate([[0.0], np.cumsum(squares)])
    return {s: (float(cumulative[int(round(s * squares.size))]) / total if total else 0.0) for s in sparsities}


def measure_sensitivity(
    candidates: list[Candidate], session: SwappableSession, feeds, advance: Callable[[], None]
) -> None:
    for candidate in candidates:
        candidate.removed_energy = removed_energy(candidate.values, sorted(set(LEVELS) | set(PROBES)))
        for probe in PROBES:
            candidate.measured[probe] = 1.0 - session.worst_cosine(feeds, {candidate.name: candidate.cut(probe)})
            advance()


def pruning_order(candidates: list[Candidate], start: list[float], frozen: set[int]) -> list[tuple[int, float]]:
    """Steps (candidate index, new sparsity) from ``start`` until every tensor not ``frozen`` is at the last level."""
    level = list(start)
    drops = [{s: c.predicted_drop(s) for s in LEVELS} | {0.0: 0.0} for c in candidates]
    steps = []
    while True:
        best = None
        for i, c in enumerate(candidates):
            if i in frozen:
                continue
            here = level[i]
            for target in (s for s in LEVELS if s > here and s >= c.min_level):
                gain = c.values.size * (target - here)
                cost = max(drops[i][target] - drops[i][here], 1e-15)
                score = gain / cost
                if best is None or score > best[0]:
                    best = (score, i, target)
        if best is None:
            return steps
        _, i, target = best
        level[i] = target
        steps.append((i, target))


def levels_after(start: list[float], steps: list[tuple[int, float]], k: int) -> list[float]:
    level = list(start)
    for i, target in steps[:k]:
        level[i] = target
    return level


@dataclass
class Search:
    """Where the search stopped: each tensor's sparsity, the worst cosine on every judging feed, the
    steps that broke the budget (each freezes its tensor), the runs it took and why it stopped."""

    levels: list[float]
    cosine: float
    frozen: list[dict]
    judge_runs: int
    stopped: str


def _all_reached(frozen: dict) -> str:
    if frozen:
        return f"every tensor either reached the largest sparsity tried ({LEVELS[-1]}) or was stopped by the budget"
    return f"every tensor reached the largest sparsity tried ({LEVELS[-1]}) within the budget"


def _bisect(
    measure_at: Callable[[int], float],
    budget: float,
    lo: int,
    lo_cos: float,
    hi: int,
    hi_cos: float | None,
    k: int,
    tried: int,
    jump_to: int | None = None,
) -> tuple[int, float, int, float | None, int]:
    """Narrow ``lo`` (meets the budget) and ``hi`` (does not) by measuring prefix ``k`` first, then midpoints,
    within QUICK_RUNS measurements in all; ``jump_to``: the second probe when the first one passed
    (try the whole order before halving). Returns ``(lo, lo_cos, hi, hi_cos, tried)``."""
    first = True
    while hi - lo > 1 and tried < QUICK_RUNS:
        value = measure_at(k)
        tried += 1
        if value >= budget:
            lo, lo_cos = k, value
        else:
            hi, hi_cos = k, value
        k = jump_to if (jump_to is not None and first and hi == jump_to + 1) else (lo + hi) // 2
        first = False
    return lo, lo_cos, hi, hi_cos, tried


def search_budget(
    candidates: list[Candidate], session: SwappableSession, judge, budget: float, advance: Callable[[], None]
) -> Search:
    """Rounds of: order the remaining steps, bisect the longest prefix that keeps the worst cosine >=
    ``budget`` on the first QUICK_FEEDS judging feeds, confirm it on all of them (halving the prefix
    while it fails), then freeze the tensor whose step broke the budget and go on with the others."""
    count = len(candidates)
    quick = judge[:QUICK_FEEDS]
    levels, cosine, frozen, runs, tried = [0.0] * count, 1.0, {}, 0, 0

    def measure(level: list[float], feeds) -> float:
        nonlocal runs
        runs += 1
        advance()
        return session.worst_cosine(feeds, {c.name: c.cut(s) for c, s in zip(candidates, level) if s > 0})

    stopped = "nothing to prune"
    for _ in range(MAX_ROUNDS):
        steps = pruning_order(candidates, levels, set(frozen))
        if not steps:
            stopped = _all_reached(frozen)
            break
        base = sum(c.predicted_drop(s) for c, s in zip(candidates, levels) if s > 0)
        predicted = [base]
        for k in range(1, len(steps) + 1):
            predicted.append(
                sum(c.predicted_drop(s) for c, s in zip(candidates, levels_after(levels, steps, k)) if s > 0)
            )
        k = max(1, max(j for j, p in enumerate(predicted) if p <= max(1.0 - budget, base)))
        lo, lo_cos, hi, hi_cos, tried = _bisect(
            lambda j, levels=levels, steps=steps: measure(levels_after(levels, steps, j), quick),
            budget,
            0,
            cosine,
            len(steps) + 1,
            None,
            k,
            tried,
            jump_to=len(steps),
        )
        if lo > 0 and len(judge) > len(quick):  # confirm on every judging feed; bisect on all of them if it fails
            value = measure(levels_after(levels, steps, lo), judge)
            if value >= budget:
                lo_cos = value
            else:
                lo, lo_cos, hi, hi_cos, tried = _bisect(
                    lambda j, levels=levels, steps=steps: measure(levels_after(levels, steps, j), judge),
                    budget,
                    0,
                    lo_cos,
                    lo,
                    value,
                    lo // 2,
                    tried,
                )
        levels, cosine = levels_after(levels, steps, lo), (lo_cos if lo > 0 else cosine)
        if hi > len(steps):
            stopped = _all_reached(frozen)
            break
        if hi != lo + 1:
            stopped = (
                f"bisection runs ({QUICK_RUNS}) used up: {lo} of {len(steps)} further steps kept; "
                f"{hi} steps gave worst per-feed cosine {hi_cos:.4f} < {budget}"
            )
            break
        i, target = steps[lo]
        frozen[i] = {
            "tensor": candidates[i].name,
            "kept_sparsity": levels[i],
            "failed_sparsity": target,
            "worst_cosine": round(hi_cos, 6),
        }
        stopped = (
            f"budget: {candidates[i].name} to sparsity {target} gave worst per-feed cosine {hi_cos:.4f} < {budget} "
            f"(last of {len(frozen)} tensors stopped this way)"
        )
    else:
        stopped += f"; search rounds ({MAX_ROUNDS}) used up"
    return Search(levels, cosine, list(frozen.values()), runs, stopped)
