"""Per-layer sensitivity and mixed precision: keep the most sensitive layers float until a fidelity target.

A layer's sensitivity is how far the model's outputs move (1 - cosine against the float model, on
the calibration feeds) when that layer alone is quantized, in the representation being built.
Mixed precision ranks the layers by it and finds, by bisection, the fewest most-sensitive layers to
keep float so that the whole model meets ``target_cosine``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from onnxshrink import node_label

from .build import Built, Settings, build
from .measure import cosine, outputs
from .static import Calibrated
from .targets import plan_targets


@dataclass
class MixedPrecision:
    built: Built
    cosine: float
    table: list[dict]
    kept_float: list[str]
    searched: list[dict]
    met_target: bool


def quantizable_layers(model: onnx.ModelProto, settings: Settings, calibrated: Calibrated | None) -> dict[str, str]:
    """label → op type of every layer the build would quantize (the static build's pre-processed graph)."""
    source = calibrated.model if settings.mode == "static" and calibrated is not None else model
    plan = plan_targets(source, op_types=settings.op_types, embeddings=settings.embeddings, exclude=settings.exclude, min_size=settings.min_size)
    layers = {}
    for target in plan.targets:
        for use in target.uses:
            layers[node_label(use.node)] = use.node.op_type
    return layers


def layer_table(
    model: onnx.ModelProto,
    settings: Settings,
    feeds: Sequence[dict[str, np.ndarray]],
    reference: list[list[np.ndarray]],
    calibrated: Calibrated | None = None,
    advance: Callable[[], None] = lambda: None,
) -> list[dict]:
    """One row per layer: its op, the output cosine with only it quantized, and 1 - cosine; most sensitive first."""
    layers = quantizable_layers(model, settings, calibrated)
    rows = []
    for label in sorted(layers):
        others = [other for other in layers if other != label]
        built = build(model, settings, keep_float=others, calibrated=calibrated)
        score = cosine(reference, outputs(built.model, feeds))
        rows.append({"layer": label, "op_type": layers[label], "cosine": round(score, 8), "sensitivity": round(1.0 - score, 8)})
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
) -> MixedPrecision:
    """Quantize everything except the fewest most-sensitive layers that lets the model reach ``target``."""
    table = layer_table(model, settings, feeds, reference, calibrated, advance)
    order = [row["layer"] for row in table]
    searched: list[dict] = []
    cache: dict[int, tuple[Built, float]] = {}

    def attempt(k: int) -> tuple[Built, float]:
        if k not in cache:
            built = build(model, settings, keep_float=order[:k], calibrated=calibrated)
            score = cosine(reference, outputs(built.model, feeds))
            cache[k] = (built, score)
            searched.append({"kept_float": k, "cosine": round(score, 8), "meets_target": score >= target})
        return cache[k]

    if attempt(0)[1] >= target or not order:
        k = 0
    else:
        low, high = 0, len(order)  # low fails; high (everything float) meets the target by construction
        while high - low > 1:
            middle = (low + high) // 2
            if attempt(middle)[1] >= target:
                high = middle
            else:
                low = middle
        k = high
    built, score = attempt(k)
    for row in table:
        row["kept_float"] = row["layer"] in order[:k]
    return MixedPrecision(built, score, table, order[:k], searched, score >= target)
