"""weight_prune's default: prune each tensor as far as a fidelity budget allows, then store it small."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx

import onnxshrink

from ..quant.measure import synthetic_feeds
from .budget import LEVELS, MAX_ROUNDS, PROBES, QUICK_RUNS, Candidate, measure_sensitivity, search_budget
from .probe import SwappableSession
from .store import SPARSE_OPSET, sparse_blocker, sparse_bytes, store_pruned

RANK_FEEDS = 2  # feeds each sensitivity probe runs (2 runs per tensor)
JUDGE_FEEDS = 24  # held-back feeds the budget is confirmed on
SYNTHETIC_FEEDS = 8
MIN_SAVING = 0.01  # store=auto: prune nothing when the file would shrink by less than this fraction
_PROBE_DTYPES = frozenset({onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE})


def split_feeds(feeds: list[dict[str, np.ndarray]]) -> tuple[list, list]:
    """(ranking, judging): the first RANK_FEEDS feeds (at most half) rank, the next JUDGE_FEEDS judge.
    A single feed does both."""
    if len(feeds) <= 1:
        return feeds, feeds
    rank = min(RANK_FEEDS, len(feeds) // 2)
    return feeds[:rank], feeds[rank:][:JUDGE_FEEDS]


def prune_to_budget(
    model: onnx.ModelProto, options: onnxshrink.Options, context: onnxshrink.Context, op_inputs
) -> dict[str, Any]:
    budget, store = options.budget, options.store or "auto"
    head: dict[str, Any] = {
        "mode": "budget",
        "budget": budget,
        "criterion": "worst per-feed cosine over the outputs (and the logits before a final Softmax/Sigmoid)",
    }
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
        raise onnxshrink.UsageError(
            f"plugin {context.plugin or 'weight_prune'!r}: "
            "pruning to a budget runs the model with swapped weights in memory, "
            "and this model keeps its weights in external data; give sparsity= or threshold="
        )
    opset = onnxshrink.model_opset(model)
    upgrade = store != "dense" and opset < SPARSE_OPSET
    weights, skipped = _scan(model, op_inputs, options.min_size, store, ignore_opset=upgrade)
    original = None
    if upgrade and weights:  # the bitmask decoder needs opset 11: convert, but only when something would be pruned
        original = onnx.ModelProto()
        original.CopyFrom(model)
        try:
            model.CopyFrom(onnxshrink.upgrade_opset(model, SPARSE_OPSET))
            head["opset_upgraded"] = f"{opset} -> {SPARSE_OPSET}"
        except ValueError as exc:
            head["opset_upgrade_failed"] = str(exc)
        weights, skipped = _scan(model, op_inputs, options.min_size, store)
    candidates = [Candidate(weight, np.array(weight.array())) for weight in weights]
    if store == "auto":
        for candidate in list(candidates):
            level = _smallest_storable_level(model, candidate)
            if level is None:
                candidates.remove(candidate)
                skipped.append(
                    {
                        "name": candidate.name,
                        "reason": f"the bitmask form would not be smaller even at sparsity {LEVELS[-1]}",
                    }
                )
            candidate.min_level = level or 0.0
    head["skipped"] = skipped
    if not candidates:
        _undo_upgrade(model, original, head)
        context.warn("no weight tensor can be pruned to a smaller file (see 'skipped'); the model is unchanged")
        return {
            **head,
            "stopped": "no prunable tensor",
            "pruned_tensors": 0,
            "sparsity": 0.0,
            "bytes_saved": 0,
            "tensors": [],
        }

    feeds = list(context.calibration_feeds())
    if not feeds:
        feeds = synthetic_feeds(model, context.rng, SYNTHETIC_FEEDS)
    if context.calibration_is_synthetic or not context.calibration_feeds():
        context.warn(
            "the budget is judged on synthetic random inputs (no --data): "
            "pass --data with real inputs for a budget that means something"
        )
    rank, judge = split_feeds(feeds)
    if rank is judge:
        context.warn("only one calibration feed: sensitivity and the budget are judged on the same feed")
    head.update(ranking_feeds=len(rank), judging_feeds=len(judge))

    session = SwappableSession(model, [c.weight for c in candidates])
    probes = len(candidates) * len(PROBES)
    with context.progress(f"sensitivity of {len(candidates)} tensors on {len(rank)} feeds", total=probes) as task:
        measure_sensitivity(candidates, session, rank, lambda: task.advance())
    with context.progress(
        f"searching the budget on {len(judge)} held-back feeds", total=QUICK_RUNS + MAX_ROUNDS
    ) as task:
        found = search_budget(candidates, session, judge, budget, lambda: task.advance())
    levels, stopped = found.levels, found.stopped
    context.log(f"stopped: {stopped}")
    undone = []
    if store == "auto":
        saving = sum(c.dense_bytes - c.stored_bytes[lv] for c, lv in zip(candidates, levels) if lv > 0)
        if 0 < saving < MIN_SAVING * model.ByteSize():
            stopped += (
                f"; the {saving} B it would save are under {MIN_SAVING:.0%} of the file: "
                "not worth the fidelity, nothing pruned"
            )
            levels = [0.0] * len(candidates)
    for index, (candidate, level) in enumerate(zip(candidates, levels)):
        if level <= 0:
            continue
        pruned = candidate.cut(level)
        if store == "auto":  # zeros that would stay dense cost fidelity and save nothing: leave the tensor whole
            size, dense = sparse_bytes(model, candidate.weight, pruned), candidate.weight.proto.ByteSize()
            if size >= dense:
                undone.append(
                    {
                        "tensor": candidate.name,
                        "sparsity": level,
                        "reason": f"bitmask form {size} B >= dense {dense} B: left unpruned",
                    }
                )
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
    if not any(level > 0 for level in levels):
        _undo_upgrade(model, original, head)
    storage = store_pruned(model, [c.name for c, lv in zip(candidates, levels) if lv > 0], store)
    storage["dense_tensors"] += undone
    cosine = found.cosine if any(lv > 0 for lv in levels) else 1.0
    if undone:  # the judged model changed: judge it again
        cosine = session.worst_cosine(judge, {c.name: c.cut(lv) for c, lv in zip(candidates, levels) if lv > 0})
    return {
        **head,
        "stopped": stopped,
        "worst_cosine": round(cosine, 6),
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


def _smallest_storable_level(model: onnx.ModelProto, candidate: Candidate) -> float | None:
    """The lowest of LEVELS at which the bitmask form of the tensor is smaller than the dense one.

    One chain is built (at sparsity 0.5) to learn the decoder's fixed cost; other levels change only
    the number of stored non-zeros."""
    weight = candidate.weight
    itemsize = candidate.values.dtype.itemsize
    n = weight.size
    variable = lambda level: -(-n // 8) + itemsize * (n - int(round(level * n)) + 1)  # noqa: E731
    fixed = sparse_bytes(model, weight, candidate.cut(0.5)) - variable(0.5)
    dense = weight.proto.ByteSize()
    candidate.stored_bytes = {level: fixed + variable(level) for level in LEVELS}
    candidate.dense_bytes = dense
    return next((level for level in LEVELS if candidate.stored_bytes[level] < dense), None)


def _undo_upgrade(model: onnx.ModelProto, original: onnx.ModelProto | None, head: dict) -> None:
    """Nothing was pruned: give back the model as it came, opset included."""
    if original is not None and "opset_upgraded" in head:
        model.CopyFrom(original)
        head["opset_upgraded"] += " (undone: nothing pruned)"


def _scan(
    model: onnx.ModelProto, op_inputs, min_size: int, store: str, ignore_opset: bool = False
) -> tuple[list, list[dict]]:
    """(weights to prune, skipped with reasons)."""
    weights, skipped = [], []
    for weight in onnxshrink.weight_tensors(model, op_inputs):
        reason = _skip_reason(model, weight, min_size, store, ignore_opset)
        if reason:
            skipped.append({"name": weight.name, "reason": reason})
        else:
            weights.append(weight)
    return weights, skipped


def _skip_reason(
    model: onnx.ModelProto, weight: onnxshrink.WeightTensor, min_size: int, store: str, ignore_opset: bool = False
) -> str | None:
    if len(weight.shape) < 2:
        return "1-D tensor (bias-like)"
    if weight.size < min_size:
        return f"{weight.size} elements < min_size {min_size}"
    if weight.in_subgraph:
        return "defined inside a subgraph: its sensitivity is not measured"
    if weight.dtype not in _PROBE_DTYPES:
        return f"dtype {onnx.TensorProto.DataType.Name(weight.dtype)} is not pruned to a budget"
    if store != "dense":
        blocker = sparse_blocker(model, weight, ignore_opset)
        if blocker:
            return (
                f"cannot be stored sparse ({blocker}); zeros would not shrink the file (store=dense prunes it anyway)"
            )
    if not np.all(np.isfinite(weight.array())):
        return "holds NaN or Inf"
    return None
