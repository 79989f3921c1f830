"""Per-layer sensitivity and mixed precision: keep the most sensitive layers float (or wider) until a fidelity target.

A layer's sensitivity is how far the model's outputs move (1 - the worst per-feed cosine of any
output against the float model) when that layer alone is quantized, in the representation being
built, measured on the first ``RANKING_FEEDS`` of ``feeds`` (a ranking needs fewer feeds than a
verdict, and on a large model each feed costs one run per layer). Mixed precision ranks the layers
by it and finds, by bisection, the fewest most-sensitive layers to keep float (or, with ``wider``,
stored at a wider scheme such as int8 under an int4 build) so that the whole model meets
``target_cosine``. The search can be judged on other feeds (``check``), held back from everything
that shaped the build.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import onnx

from onnxshrink import node_label

from .build import Built, Settings, build
from .forms import Scheme
from .measure import Judge, outputs, worst_feed_cosine
from .static import Calibrated
from .targets import plan_targets

RANKING_FEEDS = 4


@dataclass
class MixedPrecision:
    built: Built
    cosine: float
    table: list[dict]
    kept_float: list[str]
    searched: list[dict]
    met_target: bool
    wider: Scheme | None = None


def quantizable_layers(model: onnx.ModelProto, settings: Settings, calibrated: Calibrated | None) -> dict[str, str]:
    """label → op type of every layer the build would quantize (the static build's pre-processed graph)."""
    return {label: op for label, (op, _) in _layer_weights(model, settings, calibrated).items()}


def _layer_weights(
    model: onnx.ModelProto, settings: Settings, calibrated: Calibrated | None
) -> dict[str, tuple[str, int]]:
    """label → (op type, elements of the weights it reads) of every layer the build would quantize."""
    source = calibrated.model if settings.mode == "static" and calibrated is not None else model
    plan = plan_targets(
        source,
        op_types=settings.op_types,
        embeddings=settings.embeddings,
        exclude=settings.exclude,
        min_size=settings.min_size,
    )
    layers: dict[str, tuple[str, int]] = {}
    for target in plan.targets:
        for use in target.uses:
            label = node_label(use.node)
            op, size = layers.get(label, (use.node.op_type, 0))
            layers[label] = (op, size + target.weight.size)
    return layers


def layer_table(
    model: onnx.ModelProto,
    settings: Settings,
    feeds: Sequence[dict[str, np.ndarray]],
    reference: list[list[np.ndarray]],
    calibrated: Calibrated | None = None,
    advance: Callable[[], None] = lambda: None,
) -> list[dict]:
    """One row per layer: its op, the output cosine with only it quantized, and 1 - cosine; most sensitive first.

    Measured on the first ``RANKING_FEEDS`` of ``feeds``.
    """
    layers = _layer_weights(model, settings, calibrated)
    feeds, reference = feeds[:RANKING_FEEDS], reference[:RANKING_FEEDS]
    rows = []
    for label in sorted(layers):
        others = [other for other in layers if other != label]
        built = build(model, settings, keep_float=others, calibrated=calibrated)
        score = worst_feed_cosine(reference, outputs(built.model, feeds))
        op, size = layers[label]
        rows.append(
            {
                "layer": label,
                "op_type": op,
                "weights": size,
                "cosine": round(score, 8),
                "sensitivity": round(1.0 - score, 8),
            }
        )
        advance()
    rows.sort(key=lambda row: (-row["sensitivity"], row["layer"]))
    return rows


def mixed_precision(
    model: onnx.ModelProto,
    settings: Settings,
    feeds: Sequence[dict[str, np.ndarray]],
    reference: list[list[np.ndarray]],
    target: float,
    calibrated: Calibrated | None = None,
    advance: Callable[[], None] = lambda: None,
    *,
    check: tuple[Sequence[dict[str, np.ndarray]], list[list[np.ndarray]]] | None = None,
    wider: Scheme | None = None,
    table: list[dict] | None = None,
    judge: Judge | None = None,
) -> MixedPrecision:
    """Quantize everything except the fewest most-sensitive layers that lets the model reach ``target``.

    Layers are ranked on ``feeds``; each trial is judged on ``check`` (feeds, float outputs) when
    given, else on ``feeds``. With ``wider`` the kept layers are stored at that scheme, not float.
    ``table``: a :func:`layer_table` already measured for these settings (reused, copied).
    ``judge``: scores the attempts instead of ``check`` (it remembers models it has already run).
    """
    table = (
        [dict(row) for row in table]
        if table is not None
        else layer_table(model, settings, feeds, reference, calibrated, advance)
    )
    if judge is None:
        judge = Judge(*(check if check is not None else (feeds, reference)))
    order = [row["layer"] for row in table]
    searched: list[dict] = []
    cache: dict[int, tuple[Built, float]] = {}

    def attempt(k: int) -> tuple[Built, float]:
        if k not in cache:
            built = build(model, settings, keep_float=order[:k], calibrated=calibrated, wider=wider)
            score = judge.score(built.model).cosine
            cache[k] = (built, score)
            searched.append(
                {
                    "kept_" + ("wider" if wider else "float"): k,
                    "cosine": round(score, 8),
                    "meets_target": score >= target,
                }
            )
        return cache[k]

    k = _fewest(len(order), lambda count: attempt(count)[1] >= target)
    if k is None:
        k = len(order)  # not even every layer kept back reaches the target: the caller decides
    built, score = attempt(k)
    rows = {row["layer"]: row for row in table}
    how = ("kept at float16" if wider.bits == 16 else f"kept at int{wider.bits}") if wider else "kept float"
    for row in table:
        row["kept_" + ("wider" if wider else "float")] = row["layer"] in order[:k]
    for item in built.left:
        if item.get("reason") == "kept float by the sensitivity search":
            scores = [rows[label]["cosine"] for label in item.get("layers", []) if label in rows]
            if scores:
                item["reason"] = (
                    f"{how} by the sensitivity search: "
                    f"quantized alone it gives a worst per-feed cosine of {min(scores):.6f}, "
                    f"among the {k} most sensitive layers kept back to reach {target} (reached {score:.6f})"
                )
    for item in built.quantized:
        if item.get("kept_wider"):
            scores = [rows[label]["cosine"] for label in item.get("layers", []) if label in rows]
            if scores:
                item["note"] = (
                    f"{how} by the sensitivity search: "
                    f"at {settings.scheme.bits} bits alone it gives a worst per-feed cosine of {min(scores):.6f}, "
                    f"among the {k} most sensitive layers kept back to reach {target} (reached {score:.6f})"
                )
    return MixedPrecision(built, score, table, order[:k], searched, score >= target, wider)


@dataclass
class Tiered:
    built: Built
    cosine: float
    top: list[str]  # the most sensitive layers, at the top scheme (float16)
    middle: list[str]  # the next ones, at the middle scheme (int8)
    searched: list[dict]


def tiered_precision(
    model: onnx.ModelProto,
    settings: Settings,
    table: list[dict],
    target: float,
    judge: Judge,
    *,
    top: Scheme,
    middle: Scheme,
) -> Tiered | None:
    """Three precisions: the most sensitive layers at ``top``, the next ones at ``middle``, the rest as ``settings``.

    For a model where no split between ``middle`` and the low bits meets the target (every layer at
    int8 already misses it) but a few layers at float16 let the rest stay int8. ``table``: a
    :func:`layer_table`, most sensitive first. First the fewest most sensitive layers at ``top``
    that let every other layer at ``middle`` meet the target; then, keeping those, the fewest
    ``middle`` layers with the rest at the low bits, taken in order of sensitivity per weight (a
    small depthwise kernel kept at int8 costs almost nothing; a large layer at the low bits saves
    the most). None when even the first step cannot meet the target.
    """
    order = [row["layer"] for row in table]
    per_weight = {row["layer"]: row["sensitivity"] / max(row.get("weights", 1), 1) for row in table}
    searched: list[dict] = []
    builds: dict[tuple[int, int], tuple[Built, float]] = {}
    at_middle = replace(settings, mode="storage", scheme=middle)

    def attempt(k_top: int, k_middle: int | None) -> bool:
        """k_middle None: every layer below the top ones at ``middle``."""
        key = (k_top, len(order) - k_top if k_middle is None else k_middle)
        if key not in builds:
            if k_middle is None:
                built = build(model, at_middle, tiers=[(order[:k_top], top)])
            else:
                tiers = [(order[:k_top], top), (order[k_top : k_top + k_middle], middle)]
                built = build(model, replace(settings, mode="storage"), tiers=tiers)
            score = judge.score(built.model).cosine
            builds[key] = (built, score)
            searched.append({"kept_top": key[0], "kept_middle": key[1], "cosine": round(score, 8)})
        return builds[key][1] >= target

    k_top = _fewest(len(order), lambda k: attempt(k, None))
    if k_top is None:
        return None
    order = order[:k_top] + sorted(order[k_top:], key=lambda label: (-per_weight[label], label))
    rest = len(order) - k_top
    k_middle = _fewest(rest, lambda j: attempt(k_top, j) if j < rest else attempt(k_top, None))
    key = (k_top, rest if k_middle is None else k_middle)
    built, score = builds[key]
    return Tiered(built, score, list(order[:k_top]), list(order[k_top : k_top + key[1]]), searched)


def _fewest(count: int, meets: Callable[[int], bool]) -> int | None:
    """The smallest k in 0..count with ``meets(k)``, by bisection (assumes more is never worse); None if none."""
    if meets(0):
        return 0
    if not meets(count):
        return None
    low, high = 0, count  # low fails; high meets
    while high - low > 1:
        middle = (low + high) // 2
        if meets(middle):
            high = middle
        else:
            low = middle
    return high
