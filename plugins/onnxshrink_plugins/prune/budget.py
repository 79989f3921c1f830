"""Prune as far as a fidelity budget allows: measure each tensor's sensitivity, order the cuts, search.

1. Sensitivity (on the *ranking* feeds): each tensor alone is pruned to each of :data:`PROBES` and
   the drop ``1 - worst per-feed cosine`` of the model's outputs is measured (2 runs per tensor).
   Between and beyond those points the drop is interpolated linearly in the share of the tensor's
   squared magnitude the cut removes (which is known for every sparsity without running anything).
2. Order: starting from nothing pruned, the next step is always the (tensor, level) move of
   :data:`LEVELS` that removes the most weights per unit of predicted drop.
3. Search (on the *judging* feeds, held back from step 1): the longest prefix of that order whose
   worst per-feed cosine stays at or above the budget, by bisection (at most :data:`MAX_JUDGE_RUNS`
   runs), starting from the prefix the predictions say fits.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

import onnxshrink

from .probe import SwappableSession

LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
PROBES = (0.5, 0.9)
MAX_JUDGE_RUNS = 8


@dataclass
class Candidate:
    """One prunable tensor: its values, its magnitude profile and its measured sensitivity."""

    weight: onnxshrink.WeightTensor
    values: np.ndarray
    order: np.ndarray = field(init=False, repr=False)  # flat positions by increasing |w| (ties: earliest first)
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


def measure_sensitivity(candidates: list[Candidate], session: SwappableSession, feeds, advance: Callable[[], None]) -> None:
    for candidate in candidates:
        candidate.removed_energy = removed_energy(candidate.values, sorted(set(LEVELS) | set(PROBES)))
        for probe in PROBES:
            candidate.measured[probe] = 1.0 - session.worst_cosine(feeds, {candidate.name: candidate.cut(probe)})
            advance()


def pruning_order(candidates: list[Candidate]) -> list[tuple[int, float]]:
    """Steps (candidate index, new sparsity) from nothing pruned to every tensor at the last level."""
    level = [0.0] * len(candidates)
    drops = [{s: c.predicted_drop(s) for s in LEVELS} | {0.0: 0.0} for c in candidates]
    steps = []
    while True:
        best = None
        for i, c in enumerate(candidates):
            here = level[i]
            for target in (s for s in LEVELS if s > here):
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


def levels_after(steps: list[tuple[int, float]], k: int, count: int) -> list[float]:
    level = [0.0] * count
    for i, target in steps[:k]:
        level[i] = target
    return level


@dataclass
class Search:
    """Where the search stopped: the prefix kept, its worst cosine, the first prefix that failed."""

    kept: int
    kept_cosine: float
    failed: int | None
    failed_cosine: float | None
    judge_runs: int


def search_budget(candidates: list[Candidate], steps, session: SwappableSession, feeds, budget: float, advance: Callable[[], None]) -> Search:
    count = len(candidates)

    def cosine_at(k: int) -> float:
        level = levels_after(steps, k, count)
        overrides = {c.name: c.cut(s) for c, s in zip(candidates, level) if s > 0}
        advance()
        return session.worst_cosine(feeds, overrides)

    predicted = [0.0]
    for k in range(1, len(steps) + 1):
        level = levels_after(steps, k, count)
        predicted.append(sum(c.predicted_drop(s) for c, s in zip(candidates, level) if s > 0))
    allowed = 1.0 - budget
    guess = max((k for k, p in enumerate(predicted) if p <= allowed), default=0)
    lo, lo_cos, hi, hi_cos, runs = 0, 1.0, None, None, 0
    k = max(guess, 1) if steps else None
    while k is not None and runs < MAX_JUDGE_RUNS:
        cos = cosine_at(k)
        runs += 1
        if cos >= budget:
            lo, lo_cos = k, cos
        else:
            hi, hi_cos = k, cos
        upper = hi if hi is not None else len(steps) + 1
        if upper - lo <= 1:
            break
        if hi is None:  # above the guess: every remaining step at once first, then bisect
            k = len(steps) if lo < len(steps) and runs == 1 else (lo + upper) // 2
        else:
            k = (lo + upper) // 2
    return Search(lo, lo_cos, hi, hi_cos, runs)
