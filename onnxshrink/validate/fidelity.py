"""Fidelity: candidate outputs against baseline outputs on the same feeds, per output and per feed.

Per output, each metric is computed on every feed separately (in float64), so that one bad feed
cannot hide among good ones, then summarized:

- ``cosine_per_feed`` (one per feed), ``cosine_worst`` (the min; also under the old name ``cosine``),
  ``cosine_mean`` and ``worst_feed`` (the index of the worst feed);
- ``max_abs_error``: max |c - b| over every feed;
- ``rel_error``: ||c - b|| / max(||b||, NEAR_ZERO · √n) per feed, the worst (max) over feeds;
- ``snr_db``: -20 log10(rel_error) = 10 log10(||b||² / ||c - b||²) per feed, the worst (min);
  300 (``SNR_CAP_DB``) when the outputs are equal, -300 for a non-finite mismatch;
- ``top1_agreement``: the fraction of rows (all leading positions) whose argmax over the last axis
  agrees, only for outputs shaped like class scores (``class_scores_reason`` is the rule); None
  otherwise, and ``class_scores`` says which;
- ``exact_match``: fraction of equal elements; reported for every output, the main metric for
  non-float (integer, bool, string) outputs, whose ``cosine``/``rel_error``/``snr_db`` are None.

Near zero: an absolute floor ``NEAR_ZERO`` (1e-6). When baseline and candidate are both within it on
a feed (every |value| <= 1e-6), they compare equal: cosine 1, rel_error 0, snr_db 300 (their real
``max_abs_error`` is still reported). The floor also keeps rel_error finite when the baseline is zero
and the candidate is not. Otherwise, when exactly one side is all zeros, cosine is 0.

Class scores (``class_scores_reason``): a float output of rank 2 ``[batch, classes >= 2]`` or rank 3
``[batch or time, positions, classes >= 2]`` (token logits, CTC frames), whose name has no word that
marks another kind of tensor (boxes, anchors, offsets, landmarks, coordinates, recurrent states,
hidden/cell/memory, embeddings, features, masks, attention, caches: ``NOT_CLASS_WORDS``), and that is
not produced by an LSTM/GRU/RNN node (through Identity/Squeeze/Reshape/Transpose/Cast). Rank 1 has no
batch axis, rank >= 4 has spatial axes (heat maps, segmentation, detector grids): neither gets top-1.

Non-finite values: positions where both sides hold the same non-finite value (both NaN, or the same
infinity) count as equal and are left out of the float metrics; any other non-finite position makes
that feed's cosine 0.0, rel_error and max_abs_error inf and snr_db -300, and is counted in
``nonfinite_mismatch``.

Summary (the plain metric is the worst over feeds and outputs): ``cosine`` = min of ``cosine_worst``,
``cosine_mean`` = min over outputs of their mean, ``max_abs_error`` = max, ``rel_error`` = max,
``snr_db`` = min, ``top1_agreement`` = min over class-score outputs (None if none), ``exact_match`` =
min over all outputs. With labels, ``accuracy`` = {"output", "baseline", "candidate", "drop"}
(fractions; drop = baseline - candidate) from the argmax of the FIRST class-score output against the
labels (integer class ids, or one-hot/score rows whose argmax is taken).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence

import numpy as np
import onnx

from onnxshrink.errors import UsageError
from onnxshrink.validate.providers import make_session

Outputs = list[dict[str, np.ndarray]]

NEAR_ZERO = 1e-6
"""Absolute floor: values within it on both sides compare equal; rel_error's denominator floor (RMS)."""

NOT_CLASS_WORDS = frozenset(
    "box boxes bbox bboxes anchor anchors loc locs offset offsets landmark landmarks coord coords regression "
    "state states h c hn cn hx cx hidden cell memory lstm gru rnn embed embeds embedding embeddings emb "
    "feature features feat feats pooler pooled mask masks attn attention kv past present cache".split()
)
"""Words (of an output's name, split at non-letters and camelCase) that mark it as not class scores."""

SNR_CAP_DB = 300.0
"""snr_db of equal outputs (float64 round-off is about 300 dB below the signal)."""

RECURRENT_OPS = frozenset({"LSTM", "GRU", "RNN"})
_PASS_THROUGH = frozenset({"Identity", "Squeeze", "Unsqueeze", "Reshape", "Transpose", "Cast", "Flatten"})


def run_model(
    model_path: str | os.PathLike, feeds: Sequence[dict[str, np.ndarray]], provider: str = "cpu", *, threads: int = 1
) -> Outputs:
    """Outputs ``{name: array}`` of a model (loaded by path) for each feed, on one provider (CPU by default)."""
    s = make_session(model_path, provider, threads=threads).session
    names = [o.name for o in s.get_outputs()]
    return [dict(zip(names, s.run(names, dict(feed)))) for feed in feeds]


def output_producers(model_path: str | os.PathLike) -> dict[str, str]:
    """Graph output → the op that computes it, looking through Identity/Squeeze/Reshape/Transpose/Cast
    (external data is not read)."""
    graph = onnx.load(str(model_path), load_external_data=False).graph
    producer = {out: node for node in graph.node for out in node.output if out}
    result = {}
    for value in graph.output:
        node = producer.get(value.name)
        seen = 0
        while node is not None and node.op_type in _PASS_THROUGH and node.input and seen < 32:
            node, seen = producer.get(node.input[0]), seen + 1
        if node is not None:
            result[value.name] = node.op_type
    return result


def is_float(arr: np.ndarray) -> bool:
    return arr.dtype.kind in "fc" or "float" in arr.dtype.name  # includes ml_dtypes float types


def _words(name: str) -> list[str]:
    return [w.lower() for w in re.findall(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])", name)]


def class_scores_reason(name: str, arr: np.ndarray, producer: str | None = None) -> str | None:
    """None when the output is shaped like class scores (see the module docstring), else why not."""
    if not is_float(arr):
        return f"not a float tensor ({arr.dtype})"
    if arr.ndim < 2:
        return f"rank {arr.ndim}: no batch axis and class axis"
    if arr.ndim > 3:
        return f"rank {arr.ndim}: has spatial axes (class scores are [batch, classes] or [batch, positions, classes])"
    if arr.shape[-1] < 2:
        return f"last axis has {arr.shape[-1]} entry, not >= 2 classes"
    marked = sorted(set(_words(name)) & NOT_CLASS_WORDS)
    if marked:
        return f"its name marks another kind of tensor ({', '.join(marked)})"
    if producer in RECURRENT_OPS:
        return f"produced by a {producer} node (a recurrent state or sequence)"
    return None


def is_class_like(arr: np.ndarray, name: str = "", producer: str | None = None) -> bool:
    """Shaped like class scores (``class_scores_reason`` is None)."""
    return class_scores_reason(name, arr, producer) is None


def cosine(b: np.ndarray, c: np.ndarray) -> float:
    """Cosine similarity of two flat float64 vectors; both within NEAR_ZERO → 1.0, one zero → 0.0."""
    if _near_zero(b) and _near_zero(c):
        return 1.0
    nb, nc = float(np.linalg.norm(b)), float(np.linalg.norm(c))
    if nb == 0.0 or nc == 0.0:
        return 0.0
    return float(np.clip(np.dot(b, c) / (nb * nc), -1.0, 1.0))


def rel_error(b: np.ndarray, c: np.ndarray) -> float:
    """||c - b|| / max(||b||, NEAR_ZERO · √n); 0.0 when both are within NEAR_ZERO."""
    if _near_zero(b) and _near_zero(c):
        return 0.0
    nd = float(np.linalg.norm(c - b))
    floor = NEAR_ZERO * math.sqrt(max(b.size, 1))
    return nd / max(float(np.linalg.norm(b)), floor)


def snr_db(rel: float) -> float:
    """Signal-to-noise ratio in dB from a relative error: -20 log10(rel), clipped to ±SNR_CAP_DB
    (equal outputs: +SNR_CAP_DB; a non-finite mismatch: -SNR_CAP_DB), so the report stays finite JSON."""
    if rel == 0.0:
        return SNR_CAP_DB
    if math.isinf(rel) or math.isnan(rel):
        return -SNR_CAP_DB
    return float(np.clip(-20.0 * math.log10(rel), -SNR_CAP_DB, SNR_CAP_DB))


def _near_zero(x: np.ndarray) -> bool:
    return x.size == 0 or float(np.abs(x).max()) <= NEAR_ZERO


def _feed_metrics(b: np.ndarray, c: np.ndarray) -> tuple[dict, int, bool]:
    """(cosine, rel_error, max_abs_error of one feed), non-finite mismatches, any non-finite value."""
    bf, cf = b.reshape(-1).astype(np.float64), c.reshape(-1).astype(np.float64)
    fin_b, fin_c = np.isfinite(bf), np.isfinite(cf)
    both = fin_b & fin_c
    same_nonfinite = ~fin_b & ~fin_c & ((np.isnan(bf) & np.isnan(cf)) | (bf == cf))
    mismatch = int((~both & ~same_nonfinite).sum())
    if mismatch:
        return {"cosine": 0.0, "rel_error": math.inf, "max_abs_error": math.inf}, mismatch, True
    bb, cc = bf[both], cf[both]
    metrics = {
        "cosine": cosine(bb, cc),
        "rel_error": rel_error(bb, cc),
        "max_abs_error": float(np.abs(cc - bb).max()) if bb.size else 0.0,
    }
    return metrics, 0, not (fin_b.all() and fin_c.all())


def _compare_one(name: str, base: list[np.ndarray], cand: list[np.ndarray], producer: str | None = None) -> dict:
    for i, (b, c) in enumerate(zip(base, cand)):
        if b.shape != c.shape:
            raise UsageError(
                f"output {name!r} on feed {i}: candidate shape {list(c.shape)} differs from baseline {list(b.shape)}"
            )
    first = base[0]
    eq = np.concatenate([np.asarray(b == c).reshape(-1) for b, c in zip(base, cand)]) if base else np.zeros(0, bool)
    why_not = class_scores_reason(name, first, producer)
    out: dict = {
        "dtype": str(first.dtype),
        "shape": list(first.shape),
        "exact_match": float(eq.mean()) if eq.size else 1.0,
        "cosine": None,
        "cosine_worst": None,
        "cosine_mean": None,
        "cosine_per_feed": None,
        "max_abs_error": None,
        "rel_error": None,
        "snr_db": None,
        "top1_agreement": None,
        "class_scores": why_not is None,
    }
    if why_not is not None:
        out["class_scores_rule"] = why_not
    if not is_float(first):
        if first.dtype.kind in "iub":
            diffs = [np.abs(c.astype(np.float64) - b.astype(np.float64)) for b, c in zip(base, cand)]
            out["max_abs_error"] = max((float(d.max()) for d in diffs if d.size), default=0.0)
        return out
    per_feed = [_feed_metrics(b, c) for b, c in zip(base, cand)]
    cosines = [m["cosine"] for m, _, _ in per_feed]
    rels = [m["rel_error"] for m, _, _ in per_feed]
    worst = int(np.argmin(cosines))
    out.update(
        cosine=cosines[worst],
        cosine_worst=cosines[worst],
        cosine_mean=float(np.mean(cosines)),
        cosine_per_feed=cosines,
        worst_feed=worst,
        max_abs_error=max(m["max_abs_error"] for m, _, _ in per_feed),
        rel_error=max(rels),
        snr_db=snr_db(max(rels)),
    )
    if any(nonfinite for _, _, nonfinite in per_feed):
        out["nonfinite_mismatch"] = sum(n for _, n, _ in per_feed)
    if why_not is None:
        agree = np.concatenate([(b.argmax(axis=-1) == c.argmax(axis=-1)).reshape(-1) for b, c in zip(base, cand)])
        out["top1_agreement"] = float(agree.mean()) if agree.size else 1.0
    return out


def _accuracy(name: str, base: list[np.ndarray], cand: list[np.ndarray], labels: np.ndarray) -> dict:
    pred_b = np.concatenate([b.argmax(axis=-1).reshape(-1) for b in base])
    pred_c = np.concatenate([c.argmax(axis=-1).reshape(-1) for c in cand])
    lab = np.asarray(labels)
    if lab.ndim == 2 and lab.shape[0] == pred_b.size and lab.shape[1] > 1:
        lab = lab.argmax(axis=-1)
    lab = lab.reshape(-1)
    if lab.size != pred_b.size:
        raise UsageError(
            f"labels hold {lab.size} entries but output {name!r} has {pred_b.size} rows of class scores; give one "
            "label per row"
        )
    acc_b = float((pred_b == lab).mean()) if lab.size else 0.0
    acc_c = float((pred_c == lab).mean()) if lab.size else 0.0
    return {"output": name, "baseline": acc_b, "candidate": acc_c, "drop": acc_b - acc_c}


def compare_outputs(
    base_outputs: Outputs,
    cand_outputs: Outputs,
    labels: np.ndarray | None = None,
    *,
    producers: Mapping[str, str] | None = None,
) -> dict:
    """Per-output metrics under ``outputs`` plus the summary keys described in the module docstring.

    ``producers``: output name → op computing it (``output_producers``), for the class-score rule."""
    if len(base_outputs) != len(cand_outputs):
        raise UsageError(f"baseline ran {len(base_outputs)} feeds but candidate {len(cand_outputs)}")
    if not base_outputs:
        raise UsageError("no feeds to compare outputs on")
    producers = producers or {}
    names = list(base_outputs[0])
    missing = [n for n in names if n not in cand_outputs[0]]
    if missing:
        raise UsageError(
            f"candidate lacks output(s) {missing} that the baseline has; candidate outputs: {list(cand_outputs[0])}"
        )
    per: dict[str, dict] = {}
    for n in names:
        b = [np.asarray(o[n]) for o in base_outputs]
        c = [np.asarray(o[n]) for o in cand_outputs]
        per[n] = _compare_one(n, b, c, producers.get(n))

    floats = [m for m in per.values() if m["cosine"] is not None]
    classes = [m for m in per.values() if m["top1_agreement"] is not None]
    result: dict = {
        "outputs": per,
        "cosine": min(m["cosine"] for m in floats) if floats else None,
        "cosine_mean": min(m["cosine_mean"] for m in floats) if floats else None,
        "max_abs_error": max(
            (m["max_abs_error"] for m in per.values() if m["max_abs_error"] is not None), default=None
        ),
        "rel_error": max(m["rel_error"] for m in floats) if floats else None,
        "snr_db": min(m["snr_db"] for m in floats) if floats else None,
        "top1_agreement": min(m["top1_agreement"] for m in classes) if classes else None,
        "exact_match": min(m["exact_match"] for m in per.values()),
        "warnings": [],
    }
    if labels is not None:
        acc, warning = accuracy(base_outputs, cand_outputs, labels, producers=producers)
        if acc is not None:
            result["accuracy"] = acc
        if warning:
            result["warnings"].append(warning)
    return result


def accuracy(
    base_outputs: Outputs, cand_outputs: Outputs, labels: np.ndarray, *, producers: Mapping[str, str] | None = None
) -> tuple[dict | None, str | None]:
    """(``{"output", "baseline", "candidate", "drop"}``, None), or (None, warning) when no output holds class scores.

    Raises ``UsageError`` when the labels do not match the number of rows of that output.
    """
    producers = producers or {}
    names = list(base_outputs[0]) if base_outputs else []
    reasons = {n: class_scores_reason(n, np.asarray(base_outputs[0][n]), producers.get(n)) for n in names}
    first = next((n for n in names if reasons[n] is None), None)
    if first is None:
        why = "; ".join(f"{n!r}: {r}" for n, r in reasons.items())
        return None, f"labels given but no output is shaped like class scores ({why}): accuracy not computed"
    base = [np.asarray(o[first]) for o in base_outputs]
    cand = [np.asarray(o[first]) for o in cand_outputs]
    return _accuracy(first, base, cand, labels), None
