"""Fidelity: candidate outputs against baseline outputs on the same feeds.

Per output (all feeds flattened and concatenated, in float64):

- ``cosine``: cosine similarity; both vectors zero → 1.0, exactly one zero → 0.0;
- ``max_abs_error``: max |c - b|;
- ``rel_error``: ||c - b|| / ||b|| (L2); when ||b|| = 0 it is 0.0 if c is zero too, else inf;
- ``top1_agreement``: for class-like outputs (float, rank >= 2, last dim > 1) the fraction of rows
  (all leading positions) whose argmax over the last axis agrees; None for other outputs;
- ``exact_match``: fraction of equal elements; reported for every output, the main metric for
  non-float (integer, bool, string) outputs, whose ``cosine`` and ``rel_error`` are None.

Non-finite values: positions where both sides hold the same non-finite value (both NaN, or the same
infinity) count as equal and are left out of the float metrics; any other non-finite position makes
``cosine`` 0.0 and ``max_abs_error``/``rel_error`` inf, and is counted in ``nonfinite_mismatch``.

Summary: ``cosine`` = min over float outputs, ``max_abs_error`` = max, ``rel_error`` = max,
``top1_agreement`` = min over class-like outputs (None if none), ``exact_match`` = min over all
outputs. With labels, ``accuracy`` = {"baseline", "candidate", "drop"} (fractions; drop = baseline -
candidate) from the argmax of the FIRST class-like output against the labels (integer class ids, or
one-hot/score rows whose argmax is taken).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from onnxshrink.errors import UsageError
from onnxshrink.validate.providers import make_session

Outputs = list[dict[str, np.ndarray]]


def run_model(
    model_path: str | os.PathLike, feeds: Sequence[dict[str, np.ndarray]], provider: str = "cpu", *, threads: int = 1
) -> Outputs:
    """Outputs ``{name: array}`` of a model (loaded by path) for each feed, on one provider (CPU by default)."""
    s = make_session(model_path, provider, threads=threads).session
    names = [o.name for o in s.get_outputs()]
    return [dict(zip(names, s.run(names, dict(feed)))) for feed in feeds]


def is_float(arr: np.ndarray) -> bool:
    return arr.dtype.kind in "fc" or "float" in arr.dtype.name  # includes ml_dtypes float types


def is_class_like(arr: np.ndarray) -> bool:
    """Float, rank >= 2 and last dim > 1: rows of class scores."""
    return is_float(arr) and arr.ndim >= 2 and arr.shape[-1] > 1


def cosine(b: np.ndarray, c: np.ndarray) -> float:
    """Cosine similarity of two flat float64 vectors; both zero → 1.0, one zero → 0.0."""
    nb, nc = float(np.linalg.norm(b)), float(np.linalg.norm(c))
    if nb == 0.0 and nc == 0.0:
        return 1.0
    if nb == 0.0 or nc == 0.0:
        return 0.0
    return float(np.clip(np.dot(b, c) / (nb * nc), -1.0, 1.0))


def rel_error(b: np.ndarray, c: np.ndarray) -> float:
    """||c - b|| / ||b||; for ||b|| = 0: 0.0 if c is zero too, else inf."""
    nd = float(np.linalg.norm(c - b))
    nb = float(np.linalg.norm(b))
    if nb == 0.0:
        return 0.0 if nd == 0.0 else float("inf")
    return nd / nb


def _compare_one(name: str, base: list[np.ndarray], cand: list[np.ndarray]) -> dict:
    for i, (b, c) in enumerate(zip(base, cand)):
        if b.shape != c.shape:
            raise UsageError(f"output {name!r} on feed {i}: candidate shape {list(c.shape)} differs from baseline {list(b.shape)}")
    first = base[0]
    eq = np.concatenate([np.asarray(b == c).reshape(-1) for b, c in zip(base, cand)]) if base else np.zeros(0, bool)
    out: dict = {
        "dtype": str(first.dtype),
        "shape": list(first.shape),
        "exact_match": float(eq.mean()) if eq.size else 1.0,
        "cosine": None,
        "max_abs_error": None,
        "rel_error": None,
        "top1_agreement": None,
    }
    if not is_float(first):
        if first.dtype.kind in "iub":
            bf = np.concatenate([b.reshape(-1).astype(np.float64) for b in base])
            cf = np.concatenate([c.reshape(-1).astype(np.float64) for c in cand])
            out["max_abs_error"] = float(np.abs(cf - bf).max()) if bf.size else 0.0
        return out
    bf = np.concatenate([b.reshape(-1).astype(np.float64) for b in base])
    cf = np.concatenate([c.reshape(-1).astype(np.float64) for c in cand])
    fin_b, fin_c = np.isfinite(bf), np.isfinite(cf)
    both = fin_b & fin_c
    same_nonfinite = ~fin_b & ~fin_c & ((np.isnan(bf) & np.isnan(cf)) | (bf == cf))
    mismatch = int((~both & ~same_nonfinite).sum())
    bb, cc = bf[both], cf[both]
    if mismatch:
        out.update(cosine=0.0, max_abs_error=float("inf"), rel_error=float("inf"))
    else:
        out.update(
            cosine=cosine(bb, cc),
            max_abs_error=float(np.abs(cc - bb).max()) if bb.size else 0.0,
            rel_error=rel_error(bb, cc),
        )
    if not fin_b.all() or not fin_c.all():
        out["nonfinite_mismatch"] = mismatch
    if is_class_like(first):
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
            f"labels hold {lab.size} entries but output {name!r} has {pred_b.size} rows of class scores; give one label per row"
        )
    acc_b = float((pred_b == lab).mean()) if lab.size else 0.0
    acc_c = float((pred_c == lab).mean()) if lab.size else 0.0
    return {"output": name, "baseline": acc_b, "candidate": acc_c, "drop": acc_b - acc_c}


def compare_outputs(base_outputs: Outputs, cand_outputs: Outputs, labels: np.ndarray | None = None) -> dict:
    """Per-output metrics under ``outputs`` plus the summary keys described in the module docstring."""
    if len(base_outputs) != len(cand_outputs):
        raise UsageError(f"baseline ran {len(base_outputs)} feeds but candidate {len(cand_outputs)}")
    if not base_outputs:
        raise UsageError("no feeds to compare outputs on")
    names = list(base_outputs[0])
    missing = [n for n in names if n not in cand_outputs[0]]
    if missing:
        raise UsageError(f"candidate lacks output(s) {missing} that the baseline has; candidate outputs: {list(cand_outputs[0])}")
    per: dict[str, dict] = {}
    series: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {}
    for n in names:
        b = [np.asarray(o[n]) for o in base_outputs]
        c = [np.asarray(o[n]) for o in cand_outputs]
        series[n] = (b, c)
        per[n] = _compare_one(n, b, c)

    floats = [m for m in per.values() if m["cosine"] is not None]
    classes = [m for m in per.values() if m["top1_agreement"] is not None]
    result: dict = {
        "outputs": per,
        "cosine": min(m["cosine"] for m in floats) if floats else None,
        "max_abs_error": max((m["max_abs_error"] for m in per.values() if m["max_abs_error"] is not None), default=None),
        "rel_error": max(m["rel_error"] for m in floats) if floats else None,
        "top1_agreement": min(m["top1_agreement"] for m in classes) if classes else None,
        "exact_match": min(m["exact_match"] for m in per.values()),
        "warnings": [],
    }
    if labels is not None:
        acc, warning = accuracy(base_outputs, cand_outputs, labels)
        if acc is not None:
            result["accuracy"] = acc
        if warning:
            result["warnings"].append(warning)
    return result


def accuracy(base_outputs: Outputs, cand_outputs: Outputs, labels: np.ndarray) -> tuple[dict | None, str | None]:
    """(``{"output", "baseline", "candidate", "drop"}``, None), or (None, warning) when no output holds class scores.

    Raises ``UsageError`` when the labels do not match the number of rows of that output.
    """
    names = list(base_outputs[0]) if base_outputs else []
    first = next((n for n in names if is_class_like(np.asarray(base_outputs[0][n]))), None)
    if first is None:
        return None, "labels given but no output holds class scores (float, rank >= 2, last dim > 1): accuracy not computed"
    base = [np.asarray(o[first]) for o in base_outputs]
    cand = [np.asarray(o[first]) for o in cand_outputs]
    return _accuracy(first, base, cand, labels), None
