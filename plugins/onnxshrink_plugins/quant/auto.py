"""mode=auto: build each representation that applies, measure it, keep the smallest that is good enough.

Good enough: smaller than the float model, output cosine against it ≥ ``target_cosine`` on the
calibration feeds, and CPU latency (1 thread, interleaved with the float model) at most
``1 + latency_tolerance`` times the float model's. Among those, with ``prefer=size`` the smallest
file wins; files within 2% of each other count as the same size, and among them the simplest form
(storage, weights, dynamic, static in that order) wins unless another is faster by more than
``latency_tolerance``, confirmed by timing the two against each other. With ``prefer=speed`` the fastest wins (the smallest of those within
``latency_tolerance`` of it). When nothing is good enough the model stays float.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import onnx

from .build import MODES, Built, Settings, build
from .measure import cosine, latency_ratio, outputs, top1_agreement
from .sensitivity import mixed_precision
from .static import Calibrated

SIZE_TIE = 0.02


@dataclass
class Choice:
    built: Built | None
    mode: str | None
    report: dict


def choose(
    model: onnx.ModelProto,
    settings: Settings,
    modes: Sequence[str],
    feeds: Sequence[dict[str, np.ndarray]],
    reference: list[list[np.ndarray]],
    *,
    target: float,
    tolerance: float,
    prefer: str = "size",
    calibrated: Calibrated | None,
    sensitivity: bool,
    skipped: dict[str, str],
    advance: Callable[[], None] = lambda: None,
) -> Choice:
    """Try ``modes`` in order and pick the winner; ``skipped`` maps modes not tried to why."""
    float_bytes = model.ByteSize()
    rows: list[dict] = []
    builds: dict[str, Built] = {}
    digests: dict[str, dict] = {}
    for mode in MODES:
        if mode in skipped:
            rows.append({"mode": mode, "verdict": f"skipped: {skipped[mode]}"})
            continue
        if mode not in modes:
            continue
        candidate = replace(settings, mode=mode)
        row: dict = {"mode": mode}
        if sensitivity:
            mixed = mixed_precision(model, candidate, feeds, reference, target, calibrated, advance)
            built, score = mixed.built, mixed.cosine
            row["kept_float"] = mixed.kept_float
        else:
            built = build(model, candidate, calibrated=calibrated)
            score = None
        digest = hashlib.sha256(built.model.SerializeToString(deterministic=True)).hexdigest()
        if digest in digests:
            twin = digests[digest]
            row.update({k: twin[k] for k in ("bytes", "size_ratio", "cosine", "top1_agreement", "latency_ratio")})
            row["note"] = f"same model as mode={twin['mode']}"
        else:
            candidate_outputs = outputs(built.model, feeds)
            score = cosine(reference, candidate_outputs) if score is None else score
            size = built.model.ByteSize()
            row.update(
                {
                    "bytes": size,
                    "size_ratio": round(size / float_bytes, 4) if float_bytes else 1.0,
                    "cosine": round(score, 8),
                    "top1_agreement": top1_agreement(reference, candidate_outputs),
                    "latency_ratio": round(_latency(model, built.model, feeds[0], tolerance), 4),
                }
            )
            digests[digest] = row
        row["verdict"] = _verdict(row, target, tolerance)
        rows.append(row)
        builds[mode] = built
        advance()
    good = [r for r in rows if r.get("verdict") == "meets the target"]
    report: dict = {"target_cosine": target, "latency_tolerance": tolerance, "tried": rows}
    if not good:
        report["winner"] = None
        report["why"] = f"no representation was smaller than the float model, reached cosine ≥ {target} and was not slower; the model is left float"
        return Choice(None, None, report)
    if prefer == "speed":
        fastest = min(r["latency_ratio"] for r in good)
        close = [r for r in good if r["latency_ratio"] <= fastest + tolerance]  # within timing noise
        winner = min(close, key=lambda r: (r["bytes"], MODES.index(r["mode"])))
        why = _describe(winner, target, tolerance) + f"; the smallest of the fastest candidates (within {tolerance:.2f}x of {fastest:.2f}x, prefer=speed)"
    else:
        smallest = min(r["bytes"] for r in good)
        tied = sorted((r for r in good if r["bytes"] <= smallest * (1 + SIZE_TIE)), key=lambda r: MODES.index(r["mode"]))
        simplest, fastest = tied[0], min(tied, key=lambda r: r["latency_ratio"])
        # a more complex form wins a size tie only when it is faster by more than the timing tolerance,
        # confirmed by timing the two against each other
        winner = simplest
        if fastest["latency_ratio"] < simplest["latency_ratio"] - tolerance:
            head_to_head = latency_ratio(builds[simplest["mode"]].model, builds[fastest["mode"]].model, feeds[0], rounds=15)
            fastest["versus_" + simplest["mode"]] = round(head_to_head, 4)
            if head_to_head < 1 - tolerance:
                winner = fastest
        why = _describe(winner, target, tolerance)
        if len(tied) > 1:
            others = ", ".join(f"{r['mode']} {r['latency_ratio']:.2f}x" for r in tied if r is not winner)
            how = "the fastest (confirmed head to head)" if winner is not simplest else f"the simplest (none confirmed faster by more than {tolerance:.2f}x)"
            why += f"; {how} of the candidates within {SIZE_TIE:.0%} of the smallest size ({others})"
        else:
            why += "; the smallest candidate that meets the target"
    report["winner"] = winner["mode"]
    report["why"] = why
    return Choice(builds[winner["mode"]], winner["mode"], report)


def _describe(row: dict, target: float, tolerance: float) -> str:
    return (
        f"mode={row['mode']}: {row['bytes']} bytes ({row['size_ratio']:.3f} of float), cosine {row['cosine']:.6f} ≥ {target}, "
        f"latency {row['latency_ratio']:.2f}x float ≤ {1 + tolerance:.2f}x"
    )


def _latency(baseline: onnx.ModelProto, candidate: onnx.ModelProto, feed: dict[str, np.ndarray], tolerance: float) -> float:
    """Interleaved ratio; a result just over the limit is measured again, longer, and that one counts."""
    ratio = latency_ratio(baseline, candidate, feed)
    if 1 + tolerance < ratio <= 1 + 3 * tolerance:
        ratio = latency_ratio(baseline, candidate, feed, rounds=15)
    return ratio


def _verdict(row: dict, target: float, tolerance: float) -> str:
    if row["size_ratio"] >= 1:
        return "not smaller than the float model"
    if row["cosine"] < target:
        return f"fidelity: cosine {row['cosine']:.6f} < {target}"
    if row["latency_ratio"] > 1 + tolerance:
        return f"slower: {row['latency_ratio']:.2f}x the float model"
    return "meets the target"
