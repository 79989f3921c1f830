"""weight_prune: magnitude pruning of Conv, ConvTranspose, Gemm and MatMul weights: unstructured, N:M
patterns, or whole channels removed from the graph."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx

import onnxshrink
from onnxshrink import DEFAULT_WEIGHT_INPUTS, EMBEDDING_INPUTS, Method, Option

from .prune.auto import prune_to_budget
from .prune.store import STORE_CHOICES, store_pruned

CHANNEL_SPARSITY = 0.5  # structured=channel without sparsity or threshold


class WeightPrune(Method):
    """Prune the smallest-magnitude weights: to a fidelity budget, unstructured, N:M patterns, or whole channels.

    Default (no ``sparsity`` or ``threshold``): prune as far as the fidelity ``budget`` allows (the
    worst per-feed cosine of the outputs, and of the logits before a final Softmax/Sigmoid; default
    0.99), judged on calibration feeds held back from ranking. Each tensor's sensitivity is measured
    (the model with that tensor alone pruned to 50% and 90%, on the first 2 calibration feeds);
    tensors are cut in the order that removes the most weights per unit of predicted loss, and the
    longest prefix of that order whose worst per-feed cosine on the next (up to 24) feeds stays >=
    ``budget`` is kept (bisection; the tensor whose step broke the budget is frozen and the others go
    on; a bounded number of runs). Each pruned tensor is stored in the smallest form onnxruntime
    folds at load (``store=auto``: dense, or a bitmask plus the non-zeros), so the file shrinks;
    models under opset 11 are converted to opset 11 for that. Only tensors that a bitmask makes
    smaller are pruned (``store=dense`` prunes every weight and keeps the zeros dense). Without
    ``--data`` the budget is judged on random inputs, with a warning.

    Unstructured with ``sparsity`` or ``threshold``: zero the smallest weights of Conv, ConvTranspose,
    Gemm and MatMul (and
    Gather embedding tables with ``embeddings=true``) wherever they are stored: initializers, Constant
    nodes, shared tensors and subgraphs. Biases, normalization parameters, 1-D tensors and tensors under
    ``min_size`` elements are left alone. Zeros do not make onnxruntime faster or the .onnx file
    smaller; they shrink the compressed size (the stats report it) and pair with sparse storage
    (``store=auto`` or ``sparse``, or the ``sparse_store`` method).

    ``pattern=N:M`` (e.g. 2:4, what TensorRT's sparse kernels use): in every M consecutive weights
    along the input dimension (Conv input channels, the K of Gemm/MatMul) exactly the N largest are
    kept. Tensors whose input dimension is not a multiple of M, or that are read along different
    axes, are skipped and listed. onnxruntime's CPU kernels do not use the pattern.

    ``structured=channel``: remove whole channels (Conv filters, Gemm/MatMul output features,
    attention heads) from the graph, with every coupled tensor resized, using the channel analysis
    (``onnxshrink.analyze_channels``): ``sparsity`` is then the fraction of channels removed in each
    group (``scope=layer``) or over all groups (``scope=global``, scores divided by their group's
    mean), ranked by the L1/L2 norm (``norm``) of every weight coupled to a channel; ``threshold``
    removes the channels whose norm is below it. This is what makes models smaller and faster.
    Groups that cannot be shown safe (graph outputs, unknown ops, Split, LayerNorm over the channels,
    shared weights...) are listed as declined with their reasons; groups whose weights hold fewer
    than ``min_size`` elements are skipped. ``reconstruct=true`` refits the consumers of removed
    channels by least squares on the calibration data (He et al., 2017).
    """

    name = "weight_prune"
    kind = "prune"
    options = (
        Option(
            "sparsity",
            float,
            None,
            "Fraction of weights to set to zero (per tensor or global, see scope); not set: prune to the budget "
            "(structured=channel: 0.5).",
            min=0.0,
            max=1.0,
        ),
        Option(
            "budget",
            float,
            0.99,
            "Without sparsity or threshold: the lowest worst per-feed cosine of the outputs, on held-back "
            "calibration feeds, pruning may reach.",
            min=0.0,
            max=1.0,
        ),
        Option(
            "store",
            str,
            None,
            "auto: each pruned tensor dense or as a bitmask + non-zeros, whichever is smaller; sparse: bitmask "
            "wherever possible; dense: zeros stay in place. Not set: auto with the budget, dense with sparsity, "
            "threshold or pattern.",
            choices=STORE_CHOICES,
        ),
        Option("threshold", float, None, "Zero every weight with |w| < threshold instead of using sparsity.", min=0.0),
        Option(
            "scope",
            str,
            "layer",
            "layer: each tensor reaches the sparsity; global: one magnitude ranking over all tensors.",
            choices=("layer", "global"),
        ),
        Option("embeddings", bool, False, "Also prune Gather embedding tables (input 0 of Gather)."),
        Option(
            "min_size",
            int,
            128,
            "Skip weight tensors (structured=channel: channel groups whose weights hold) fewer elements than this.",
            min=0,
        ),
        Option(
            "structured",
            str,
            "none",
            "none: zero single weights; channel: remove whole channels from the graph (sparsity = fraction of "
            "channels).",
            choices=("none", "channel"),
        ),
        Option(
            "pattern",
            str,
            None,
            "N:M, e.g. 2:4: keep exactly the N largest of every M consecutive weights along the input dimension.",
        ),
        Option(
            "norm",
            str,
            "l1",
            "structured=channel: rank channels by the L1 or L2 norm of their coupled weights.",
            choices=("l1", "l2"),
        ),
        Option(
            "reconstruct",
            bool,
            False,
            "structured=channel: refit the consumers of removed channels by least squares on calibration data.",
        ),
    )
    # Searched by `onnxshrink tune` (docs/plugin-authors.md, "Search space"); other options keep their defaults.
    search_space = (
        onnxshrink.Tunable("sparsity", low=0.2, high=0.9, step=0.05),
        onnxshrink.Tunable("structured", choices=("none", "channel")),
        onnxshrink.Tunable("scope", choices=("layer", "global")),
    )

    @classmethod
    def check_options(cls, values: onnxshrink.Options, given: set[str]) -> None:
        if "threshold" in given and "sparsity" in given:
            raise cls.option_error("give either sparsity or threshold, not both")
        channel = values.structured == "channel"
        fixed = sorted(given & {"sparsity", "threshold", "pattern"}) + (["structured=channel"] if channel else [])
        if "budget" in given and fixed:
            raise cls.option_error(f"budget decides how far to prune; it cannot be combined with {', '.join(fixed)}")
        if "store" in given and channel:
            raise cls.option_error("store applies to zeroed weights, not structured=channel (channels are removed)")
        if "scope" in given and not channel and not given & {"sparsity"}:
            raise cls.option_error("scope needs sparsity= (without it, the budget sets each tensor's sparsity)")
        if values.pattern is not None:
            if _parse_pattern(values.pattern) is None:
                raise cls.option_error(
                    f"option 'pattern' must be N:M with 1 <= N < M, e.g. 2:4 (got {values.pattern!r})"
                )
            clash = sorted(given & {"sparsity", "threshold", "scope", "embeddings"}) + (
                ["structured=channel"] if channel else []
            )
            if clash:
                raise cls.option_error(
                    f"pattern fixes which weights are zeroed; it cannot be combined with {', '.join(clash)}"
                )
        for option in ("norm", "reconstruct"):
            if option in given and not channel:
                raise cls.option_error(f"option {option!r} needs structured=channel")
        if channel and values.embeddings:
            raise cls.option_error("embeddings applies to unstructured pruning, not structured=channel")

    def apply(self, model: onnx.ModelProto, options: onnxshrink.Options, context: onnxshrink.Context) -> dict[str, Any]:
        if options.structured == "channel":
            return _prune_channels(model, options, context)
        op_inputs = dict(DEFAULT_WEIGHT_INPUTS)
        if options.embeddings:
            op_inputs.update(EMBEDDING_INPUTS)
        if options.pattern is not None:
            stats = _prune_pattern(model, options, context)
        elif options.sparsity is None and options.threshold is None:
            return prune_to_budget(model, options, context, op_inputs)
        else:
            stats = _prune_unstructured(model, options, context, op_inputs)
        if options.store not in (None, "dense") and stats["tensors"]:
            stats["storage"] = store_pruned(model, [t["name"] for t in stats["tensors"]], options.store)
        return stats


def _prune_unstructured(
    model: onnx.ModelProto, options: onnxshrink.Options, context: onnxshrink.Context, op_inputs
) -> dict[str, Any]:
    """Zero a fixed fraction (per tensor or global) or every weight under a threshold."""
    chosen, skipped = [], []
    for weight in onnxshrink.weight_tensors(model, op_inputs):
        reason = _skip_reason(weight, options.min_size)
        if reason:
            skipped.append({"name": weight.name, "reason": reason})
        else:
            chosen.append(weight)

    # Tensor by tensor: a large model's weights are read, pruned and handed back one at a time.
    work = _Workspace(max((w.size for w in chosen), default=0))
    if options.threshold is not None:
        threshold = options.threshold
        mask_of = lambda mag: np.less(mag, threshold, out=work.mask[: mag.size])  # noqa: E731
    elif options.scope == "global":
        mask_of = _GlobalCut(chosen, options.sparsity, work).mask
    else:
        mask_of = lambda mag: _smallest(mag, options.sparsity, work)  # noqa: E731

    tensors, total, zeros = [], 0, 0
    with context.progress(f"pruning {len(chosen)} tensors", total=sum(w.nbytes for w in chosen), unit="B") as task:
        for weight in chosen:
            array = weight.array()
            if not array.flags.writeable or not array.flags.c_contiguous:
                array = np.array(array, order="C")  # a read-only view of the proto's bytes: edit a copy
            nz_before, nz = work.prune(array, mask_of)
            before = 1 - nz_before / array.size if array.size else 0.0
            weight.set_array(array)
            total += array.size
            zeros += array.size - nz
            tensors.append(
                {
                    "name": weight.name,
                    "op_types": weight.op_types,
                    "shape": list(weight.shape),
                    "source": weight.source,
                    "in_subgraph": weight.in_subgraph,
                    "shared_by": len(weight.uses),
                    "sparsity_before": round(before, 6),
                    "sparsity_after": round(1 - nz / array.size, 6) if array.size else 0.0,
                }
            )
            del array
            task.advance(weight.nbytes)
    if not chosen:
        context.warn("no weight tensor matched; the model is unchanged")
    mode = "threshold" if options.threshold is not None else options.scope
    return _summary(tensors, skipped, total, zeros, mode=mode)


def _summary(tensors: list[dict], skipped: list[dict], total: int, zeros: int, **head: Any) -> dict[str, Any]:
    """The stats of an unstructured or N:M run: how many weights became zero, per tensor and overall."""
    return {
        **head,
        "pruned_tensors": len(tensors),
        "pruned_params": total,
        "zeros": zeros,
        "sparsity": round(zeros / total, 6) if total else 0.0,
        "tensors": tensors,
        "skipped": skipped,
    }


class _Workspace:
    """Buffers reused from tensor to tensor (fresh memory costs page faults on every tensor), and the
    per-tensor pruning step. Bit tricks below rely on |w| being non-negative: its float32 bit patterns
    sort like its values (NaN last, as numpy sorts floats) and are zero exactly for +0 and -0."""

    def __init__(self, size: int):
        self.mag = np.empty(size, np.float32)
        self.scratch = np.empty(size, np.float32)
        self.mask = np.empty(size, bool)

    def magnitude(self, array: np.ndarray) -> np.ndarray:
        """|array| as float32, flat, in the shared buffer."""
        out = self.mag[: array.size]
        if array.dtype == np.float32:
            return np.abs(array.reshape(-1), out=out)
        np.copyto(out, array.reshape(-1), casting="unsafe")
        return np.abs(out, out=out)

    def prune(self, array: np.ndarray, mask_of: Callable[[np.ndarray], np.ndarray]) -> tuple[int, int]:
        """Set ``array`` (C-contiguous, writable) to +0 where ``mask_of(|array|)``; (non-zeros before, after)."""
        mag = self.magnitude(array)
        exact = array.dtype.name in _EXACT_IN_FLOAT32  # |w| as float32 is zero exactly where w is
        mag_bits = mag.view(np.uint32)
        before = int(np.count_nonzero(mag_bits) if exact else np.count_nonzero(array))
        mask = mask_of(mag)
        keep = np.logical_not(mask, out=mask)  # the mask is not needed after this
        # Multiplying the bit patterns by 0 or 1 writes +0 (all bits clear) where masked, the same bytes
        # as a masked copy of 0, without a branch per element.
        bits = array.reshape(-1).view(f"u{array.dtype.itemsize}")
        np.multiply(bits, keep, out=bits, casting="unsafe")
        if not exact:
            return before, int(np.count_nonzero(array))
        np.multiply(mag_bits, keep, out=mag_bits, casting="unsafe")
        return before, int(np.count_nonzero(mag_bits))


_EXACT_IN_FLOAT32 = frozenset({"float32", "float16", "bfloat16"})


class _GlobalCut:
    """The k = round(fraction * n) smallest magnitudes over all tensors, found without holding them all.

    Non-negative float32 values sort like their bit patterns, so a histogram of the top 16 bits (one
    pass) finds the bin holding the k-th value; a second pass collects that bin to get the exact cut.
    Ties at the cut go to the earliest positions in tensor order, as one stable sort would choose.
    """

    def __init__(self, weights: list[onnxshrink.WeightTensor], fraction: float, work: _Workspace):
        total = sum(w.size for w in weights)
        k = int(round(fraction * total))
        self.cut, self.ties, self.work = -np.inf, 0, work
        if k == 0:
            return
        hist = np.zeros(1 << 16, dtype=np.int64)
        for w in weights:
            m = work.magnitude(w.array())
            high = np.right_shift(m.view(np.uint32), 16, out=work.scratch[: m.size].view(np.uint32))
            hist += np.bincount(high, minlength=1 << 16)
        cumulative = np.cumsum(hist)
        bin_ = int(np.searchsorted(cumulative, k))
        below = int(cumulative[bin_ - 1]) if bin_ else 0
        in_bin = []
        for w in weights:
            m = work.magnitude(w.array())
            in_bin.append(m[_high_bits(m) == bin_])
        in_bin = np.concatenate(in_bin)
        need = k - below
        self.cut = np.partition(in_bin, need - 1)[need - 1]
        self.ties = need - int(np.count_nonzero(in_bin < self.cut))

    def mask(self, magnitude: np.ndarray) -> np.ndarray:
        mask = np.less(magnitude, self.cut, out=self.work.mask[: magnitude.size])
        if self.ties:
            tied = np.flatnonzero(magnitude == self.cut)[: self.ties]
            mask[tied] = True
            self.ties -= len(tied)
        return mask


def _high_bits(magnitude: np.ndarray) -> np.ndarray:
    """The top 16 bits of non-negative float32 values: they sort like the values."""
    return magnitude.view(np.uint32) >> 16


def _skip_reason(weight: onnxshrink.WeightTensor, min_size: int) -> str | None:
    if len(weight.shape) < 2:
        return "1-D tensor (bias-like)"
    if weight.size < min_size:
        return f"{weight.size} elements < min_size {min_size}"
    return None


def _smallest(magnitudes: np.ndarray, fraction: float, work: _Workspace | None = None) -> np.ndarray:
    """A mask of exactly round(fraction * n) smallest entries; ties at the cut go to the earliest
    positions (deterministic). O(n) with a partition, not a full sort: large tensors stay fast."""
    n = magnitudes.size
    work = work or _Workspace(n)
    k = int(round(fraction * n))
    mask = work.mask[:n]
    if k == 0 or k >= n:
        mask[:] = k > 0
        return mask
    scratch = work.scratch[:n]
    np.copyto(scratch, magnitudes)
    scratch.view(np.int32).partition(k - 1)  # non-negative floats sort like their bits; twice as fast
    cut = scratch[k - 1]
    np.less_equal(magnitudes, cut, out=mask)
    if np.count_nonzero(mask) == k:  # the cut value is not tied (the usual case): done
        return mask
    np.less(magnitudes, cut, out=mask)
    missing = k - int(np.count_nonzero(mask))
    if missing:
        mask[np.flatnonzero(magnitudes == cut)[:missing]] = True
    return mask


def _parse_pattern(text: str) -> tuple[int, int] | None:
    match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", text)
    if not match:
        return None
    n, m = int(match[1]), int(match[2])
    return (n, m) if 1 <= n < m else None


def _input_axis(weight: onnxshrink.WeightTensor) -> int | None:
    """The axis of ``weight`` that meets the layer's input features, the same for every reader, or None."""
    axes = set()
    for use in weight.weight_uses:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in use.node.attribute}
        op, ndim = use.node.op_type, len(weight.shape)
        if op == "Conv":
            axes.add(1)
        elif op == "ConvTranspose":
            axes.add(0)
        elif op == "Gemm":
            trans = attrs.get("transA" if use.index == 0 else "transB", 0)
            axes.add((0 if trans else 1) if use.index == 0 else (1 if trans else 0))
        else:  # MatMul: A [..., M, K] @ B [..., K, N]
            axes.add(ndim - 1 if use.index == 0 else ndim - 2)
    return axes.pop() if len(axes) == 1 else None


def nm_mask(array: np.ndarray, n: int, m: int, axis: int) -> np.ndarray:
    """True where a weight is kept: the n largest |w| of every m consecutive weights along ``axis``
    (ties go to the earlier weight)."""
    moved = np.moveaxis(np.abs(array.astype(np.float32)), axis, -1)
    blocks = moved.reshape(*moved.shape[:-1], moved.shape[-1] // m, m)
    order = np.argsort(-blocks, axis=-1, kind="stable")
    keep = np.zeros(blocks.shape, dtype=bool)
    np.put_along_axis(keep, order[..., :n], True, axis=-1)
    return np.moveaxis(keep.reshape(moved.shape), -1, axis)


def _prune_pattern(model: onnx.ModelProto, options: onnxshrink.Options, context: onnxshrink.Context) -> dict[str, Any]:
    n, m = _parse_pattern(options.pattern)
    tensors, skipped, total, zeros = [], [], 0, 0
    for weight in onnxshrink.weight_tensors(model):
        axis = _input_axis(weight)
        reason = _skip_reason(weight, options.min_size)
        if reason is None and axis is None:
            reason = "read along different axes by its nodes"
        if reason is None and weight.shape[axis] % m:
            reason = f"input dimension {weight.shape[axis]} is not a multiple of {m}"
        if reason:
            skipped.append({"name": weight.name, "reason": reason})
            continue
        array = weight.array()
        pruned = np.where(nm_mask(array, n, m, axis), array, np.zeros((), array.dtype))
        weight.set_array(pruned)
        nz = int(np.count_nonzero(pruned))
        total += pruned.size
        zeros += pruned.size - nz
        tensors.append(
            {
                "name": weight.name,
                "op_types": weight.op_types,
                "shape": list(weight.shape),
                "axis": axis,
                "sparsity_after": round(1 - nz / pruned.size, 6),
            }
        )
    if not tensors:
        context.warn(f"no weight tensor can take the {n}:{m} pattern; the model is unchanged")
    return _summary(tensors, skipped, total, zeros, mode="pattern", pattern=f"{n}:{m}")


def _prune_channels(model: onnx.ModelProto, options: onnxshrink.Options, context: onnxshrink.Context) -> dict[str, Any]:
    if options.sparsity is None:
        options = options.replace(sparsity=CHANNEL_SPARSITY)
    analysis = onnxshrink.analyze_channels(model)
    feeds = _reconstruction_feeds(context) if options.reconstruct else []
    original = onnx.ModelProto()
    if options.reconstruct:
        original.CopyFrom(model)
    groups, skipped = [], []
    for group in analysis.prunable:
        if group.weights < options.min_size:
            skipped.append({"id": group.id, "reason": f"{group.weights} weight elements < min_size {options.min_size}"})
        else:
            groups.append(group)
    scores = [onnxshrink.channel_importance(analysis, g, options.norm) for g in groups]
    counts = _channel_counts(groups, scores, options)
    selection = {g.id: onnxshrink.select_channels(g, s, k) for g, s, k in zip(groups, scores, counts)}
    removal = onnxshrink.remove_channels(analysis, {gid: chosen for gid, chosen in selection.items() if chosen})
    removal_stats = [
        {"id": g.id, "channels": g.size, "removed": len(selection[g.id]), "sources": g.sources, "sinks": g.sinks}
        for g in groups
    ]
    stats: dict[str, Any] = {
        "mode": "channel",
        "scope": "threshold" if options.threshold is not None else options.scope,
        "norm": options.norm,
        "channels": sum(g.size for g in groups),
        "channels_removed": sum(len(c) for c in selection.values()),
        "params_before": removal.params_before,
        "params_after": removal.params_after,
        "groups": removal_stats,
        "declined": [g.describe() for g in analysis.declined],
        "skipped": skipped,
    }
    if not groups:
        context.warn("no channel group can be pruned; the model is unchanged")
    if options.reconstruct and stats["channels_removed"]:
        stats["reconstruction"] = onnxshrink.reconstruct_consumers(
            original, model, removal, feeds, method="lstsq", seed=context.seed
        )
    return stats


def _reconstruction_feeds(context: onnxshrink.Context) -> list[dict[str, np.ndarray]]:
    feeds = context.calibration_feeds()
    if not feeds:
        raise onnxshrink.UsageError(f"plugin {context.plugin!r}: reconstruct=true needs calibration data; pass --data")
    if context.calibration_is_synthetic:
        context.warn("reconstruction fits random inputs (no --data given); pass --data for a meaningful refit")
    return feeds


def _channel_counts(groups, scores: list[np.ndarray], options: onnxshrink.Options) -> list[int]:
    """How many channels each group should lose (select_channels rounds to what the group allows)."""
    if options.threshold is not None:
        return [int(np.sum(s < options.threshold)) for s in scores]
    if options.scope == "layer" or not groups:
        return [int(round(options.sparsity * g.size)) for g in groups]
    normalized = np.concatenate([s / (s.mean() if s.mean() > 0 else 1.0) for s in scores])
    owner = np.concatenate([np.full(g.size, k) for k, g in enumerate(groups)])
    lowest = np.argsort(normalized, kind="stable")[: int(round(options.sparsity * normalized.size))]
    return np.bincount(owner[lowest], minlength=len(groups)).tolist()


@onnxshrink.hookimpl
def register_methods(register):
    register(WeightPrune)
