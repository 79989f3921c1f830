"""weight_prune's default: prune each tensor as far as a fidelity budget allows, then store it small."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx

import onnxshrink

from .budget import MAX_ROUNDS, PROBES, QUICK_RUNS, Candidate, measure_sensitivity, search_budget
from .probe import SwappableSession, synthetic_feeds
from .store import SPARSE_OPSET, sparse_blocker, sparse_bytes, store_pruned

RANK_FEEDS = 2  # feeds each sensitivity probe runs (2 runs per tensor)
JUDGE_FEEDS = 16  # held-back feeds the budget is confirmed on
SYNTHETIC_FEEDS = 8
_PROBE_DTYPES = frozenset({onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE})


def split_feeds(feeds: list[dict[str, np.ndarray]]) -> tuple[list, list]:
    """(ranking, judging): the first half ranks (its first RANK_FEEDS), the second half judges
    (its first JUDGE_FEEDS). A single feed does both."""
    if len(feeds) <= 1:
        return feeds, feeds
    half = len(feeds) // 2
    return feeds[:half][:RANK_FEEDS], feeds[half:][:JUDGE_FEEDS]


def prune_to_budget(model: onnx.ModelProto, options: dict[str, Any], context: onnxshrink.Context, op_inputs) -> dict[str, Any]:
    budget, store = options["budget"], options["store"] or "auto"
    head: dict[str, Any] = {"mode": "budget", "budget": budget, "criterion": "worst per-feed cosine over the outputs (and the logits before a final Softmax/Sigmoid)"}
    opset = onnxshrink.model_opset(model)
    if store != "dense" and opset < SPARSE_OPSET:
        try:
            model.CopyFrom(onnxshrink.upgrade_opset(model, SPARSE_OPSET))
            head["opset_upgraded"] = f"{opset} -> {SPARSE_OPSET}"
        except ValueError as exc:
            head["opset_upgrade_failed"] = str(exc)

    candidates, skipped = [], []
    for weight in onnxshrink.weight_tensors(model, op_inputs):
        reason = _skip_reason(model, weight, options["min_size"], store)
        if reason:
            skipped.append({"name": weight.name, "reason": reason})
        else:
            candidates.append(Candidate(weight, np.array(weight.array())))
    head["skipped"] = skipped
    if not candidates:
        context.warn("no weight tensor can be pruned to a smaller file (see 'skipped'); the model is unchanged")
        return {**head, "stopped": "no prunable tensor", "pruned_tensors": 0, "sparsity": 0.0, "bytes_saved": 0, "tensors": []}

    feeds = list(context.calibration_feeds())
    if not feeds:
        feeds = synthetic_feeds(model, context.rng, SYNTHETIC_FEEDS)
    if context.calibration_is_synthetic or not context.calibration_feeds():
        context.warn("the budget is judged on synthetic random inputs (no --data): pass --data with real inputs for a budget that means something")
    rank, judge = split_feeds(feeds)
    if rank is judge:
        context.warn("only one calibration feed: sensitivity and the budget are judged on the same feed")
    head.update(ranking_feeds=len(rank), judging_feeds=len(judge))

    session = SwappableSession(model, [c.weight for c in candidates])
    probes = len(candidates) * len(PROBES)
    with context.progress(f"sensitivity of {len(candidates)} tensors on {len(rank)} feeds", total=probes) as task:
        measure_sensitivity(candidates, session, rank, lambda: task.advance())
    with context.progress(f"searching the budget on {len(judge)} held-back feeds", total=QUICK_RUNS + MAX_ROUNDS) as task:
        found = search_budget(candidates, session, judge, budget, lambda: task.advance())
    levels, stopped = found.levels, found.stopped
    context.log(f"stopped: {stopped}")
    undone = []
    for index, (candidate, level) in enumerate(zip(candidates, levels)):
        if level <= 0:
            continue
        pruned = candidate.cut(level)
        if store == "auto":  # zeros that would stay dense cost fidelity and save nothing: leave the tensor whole
            size, dense = sparse_bytes(model, candidate.weight, pruned), candidate.weight.proto.ByteSize()
            if size >= dense:
                undone.append({"tensor": candidate.name, "sparsity": level, "reason": f"bitmask form {size} B >= dense {dense} B: left unpruned"})
                levels[index] = 0.0
                continue
        candidate.weight.set_array(pruned)
    tensors, total, zeros = [], 0, 0
    for candidate, level in zip(candidates, levels):
        nz = int(np.count_nonzero(candidate.cut(level))) if level > 0 else int(np.count_nonzero(candidate.values))
        total += candidate.weight.size
        zeros += candidate.weight.size - nz
        tensors.append(
            {
                "name": candidate.name,
                "op_types": candidate.weight.op_types,
                "shape": list(candidate.weight.shape),
                "sparsity_after": round(1 - nz / candidate.weight.size, 6),
                "drop_at": {str(p): round(candidate.measured[p], 6) for p in PROBES},
            }
        )
    storage = store_pruned(model, [c.name for c, lv in zip(candidates, levels) if lv > 0], store)
    storage["dense_tensors"] += undone
    return {
        **head,
        "stopped": stopped,
        "worst_cosine": round(found.cosine, 6),
        "stopped_tensors": found.frozen,
        "judge_runs": found.judge_runs,
        "model_runs": session.runs,
        "pruned_tensors": sum(1 for lv in levels if lv > 0),
        "pruned_params": total,
        "zeros": zeros,
        "sparsity": round(zeros / total, 6) if total else 0.0,
        **storage,
        "tensors": tensors,
    }


def _skip_reason(model: onnx.ModelProto, weight: onnxshrink.WeightTensor, min_size: int, store: str) -> str | None:
    if len(weight.shape) < 2:
        return "1-D tensor (bias-like)"
    if weight.size < min_size:
        return f"{weight.size} elements < min_size {min_size}"
    if weight.in_subgraph:
        return "defined inside a subgraph: its sensitivity is not measured"
    if weight.dtype not in _PROBE_DTYPES:
        return f"dtype {onnx.TensorProto.DataType.Name(weight.dtype)} is not pruned to a budget"
    if store != "dense":
        blocker = sparse_blocker(model, weight)
        if blocker:
            return f"cannot be stored sparse ({blocker}); zeros would not shrink the file (store=dense prunes it anyway)"
    if not np.all(np.isfinite(weight.array())):
        return "holds NaN or Inf"
    return None

