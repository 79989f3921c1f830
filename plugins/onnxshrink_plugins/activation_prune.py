"""activation_prune: remove channels and neurons that are (near) dead on the calibration data."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx

import onnxshrink
from onnxshrink import Method, Option

RELU_LIKE = frozenset(
    {
        "Relu",
        "LeakyRelu",
        "PRelu",
        "ThresholdedRelu",
        "Clip",
        "Elu",
        "Selu",
        "Celu",
        "Gelu",
        "HardSwish",
        "Softplus",
        "Mish",
    }
)
# Ops that keep a channel that is zero everywhere at zero (so "dead after a ReLU" survives them).
ZERO_PRESERVING = frozenset(
    {
        "Flatten",
        "Reshape",
        "Transpose",
        "Squeeze",
        "Unsqueeze",
        "Identity",
        "Dropout",
        "MaxPool",
        "AveragePool",
        "GlobalAveragePool",
        "GlobalMaxPool",
    }
)
GATES = frozenset({"Erf", "Sigmoid", "Tanh"})


class ActivationPrune(Method):
    """Remove channels and neurons whose activations are (near) zero on the calibration data.

    Runs the calibration data and measures, for every channel group of the channel analysis
    (``onnxshrink.analyze_channels``), the activations where the group's consumers read it (after
    residual Adds, pooling and Flatten). A channel whose largest |activation| is at most
    ``threshold`` (default 0: exactly dead) is removed from the graph together with everything coupled
    to it; ``ratio`` instead removes that fraction of each group's channels with the lowest mean
    |activation|. With ``after=relu`` (default) only groups read after ReLU-like ops are considered
    (Relu, Clip, LeakyRelu, GELU (also written out with Erf), SiLU, ...; through pooling, Flatten and
    Reshape). Attention heads go only as whole heads; groups with no consumer weights (query/key
    dimensions) are skipped. The removed channels' mean contribution is folded into the consumers'
    biases (``fold``), which keeps the outputs unchanged for channels that are constant on the
    calibration data; ``reconstruct=true`` refits the consumers by least squares instead. Needs
    calibration data (``--data``); on random inputs channels look alive that real data leaves dead.
    """

    name = "activation_prune"
    kind = "prune"
    options = (
        Option(
            "threshold",
            float,
            0.0,
            "Remove channels whose largest |activation| on the calibration data is at most this.",
            min=0.0,
        ),
        Option(
            "ratio",
            float,
            None,
            "Instead of threshold: remove this fraction of each group's channels, lowest mean |activation| first.",
            min=0.0,
            max=1.0,
        ),
        Option(
            "after",
            str,
            "relu",
            "relu: only channels read after ReLU-like ops; any: every prunable channel group.",
            choices=("relu", "any"),
        ),
        Option("fold", bool, True, "Fold the removed channels' mean contribution into the consumers' biases."),
        Option(
            "reconstruct",
            bool,
            False,
            "Refit the consumers by least squares on the calibration data (replaces fold).",
        ),
    )
    # Searched by `onnxshrink tune` (docs/plugin-authors.md, "Search space"); other options keep their defaults.
    search_space = (onnxshrink.Tunable("ratio", low=0.05, high=0.5, step=0.05),)

    @classmethod
    def check_options(cls, values: onnxshrink.Options, given: set[str]) -> None:
        if "threshold" in given and "ratio" in given:
            raise cls.option_error("give either threshold or ratio, not both")

    def apply(self, model: onnx.ModelProto, options: onnxshrink.Options, context: onnxshrink.Context) -> dict[str, Any]:
        feeds = context.calibration_feeds()
        if not feeds:
            raise onnxshrink.UsageError(
                f"plugin {self.name!r} needs calibration data to find dead channels; pass --data"
            )
        if context.calibration_is_synthetic:
            context.warn("dead channels were measured on random inputs (no --data given)")
        analysis = onnxshrink.analyze_channels(model)
        groups, skipped = [], []
        index = onnxshrink.GraphIndex(model.graph)  # the graph is only read until the channels go
        for group in analysis.prunable:
            reason = _skip_reason(index, group, options.after)
            if reason:
                skipped.append({"id": group.id, "reason": reason})
            else:
                groups.append(group)
        tensors = sorted({slot.tensor for g in groups for slot in g.slots})
        values = (
            {
                name: np.concatenate(arrays, axis=0)
                for name, arrays in context.activations(model, tensors, feeds).items()
            }
            if tensors
            else {}
        )

        selection, report = {}, []
        for group in groups:
            per_slot = [np.abs(slot.take(values[slot.tensor], group.size).astype(np.float64)) for slot in group.slots]
            largest = np.max([v.max(axis=1) for v in per_slot], axis=0)
            mean = np.mean([v.mean(axis=1) for v in per_slot], axis=0)
            if options.ratio is not None:
                chosen = onnxshrink.select_channels(group, mean, int(round(options.ratio * group.size)))
            else:
                chosen = _dead(group, largest, options.threshold)
            selection[group.id] = chosen
            report.append(
                {
                    "id": group.id,
                    "channels": group.size,
                    "removed": len(chosen),
                    "dead": int(np.sum(largest <= options.threshold)),
                }
            )

        original = onnx.ModelProto()
        original.CopyFrom(model)
        removal = onnxshrink.remove_channels(analysis, {gid: c for gid, c in selection.items() if c})
        stats: dict[str, Any] = {
            "criterion": "ratio" if options.ratio is not None else "threshold",
            "channels": sum(g.size for g in groups),
            "channels_removed": sum(len(c) for c in selection.values()),
            "params_before": removal.params_before,
            "params_after": removal.params_after,
            "groups": report,
            "skipped": skipped,
            "declined": [g.describe() for g in analysis.declined],
        }
        method = "lstsq" if options.reconstruct else "mean" if options.fold else None
        if method and removal.sinks:
            stats["reconstruction"] = onnxshrink.reconstruct_consumers(
                original, model, removal, feeds, method=method, seed=context.seed
            )
        if not stats["channels_removed"]:
            context.warn("no channel met the criterion; the model is unchanged")
        return stats


def _dead(group: onnxshrink.ChannelGroup, largest: np.ndarray, threshold: float) -> list[int]:
    """The dead channels the group can lose: whole dead units (heads), as many per block (grouped Conv)."""
    dead = largest <= threshold
    if group.unit > 1:
        units = np.flatnonzero(dead.reshape(-1, group.unit).all(axis=1))[: group.max_removable // group.unit]
        return sorted(int(c) for u in units for c in range(u * group.unit, (u + 1) * group.unit))
    if group.blocks > 1:
        per_block = min(int(b.sum()) for b in dead.reshape(group.blocks, -1))
        return onnxshrink.select_channels(group, largest, per_block * group.blocks)
    return onnxshrink.select_channels(group, largest, int(dead.sum()))


def _skip_reason(index: onnxshrink.GraphIndex, group: onnxshrink.ChannelGroup, after: str) -> str | None:
    if not group.slots:
        return "no consumer weights read these channels (nothing to measure)"
    if after == "relu":
        loose = [slot.tensor for slot in group.slots if not _after_relu(index, slot.tensor)]
        if loose:
            return f"{loose[0]!r} is not read after a ReLU-like op (after=any includes it)"
    return None


def _after_relu(index: onnxshrink.GraphIndex, tensor: str) -> bool:
    """Whether ``tensor`` is a ReLU-like activation, seen through ops that keep zeros at zero, and
    GELU/SiLU written out as x · gate(x)."""
    node = index.producer(tensor)
    if node is None:
        return False
    op = node.op_type
    if op in RELU_LIKE:
        return True
    if op in ZERO_PRESERVING:
        return _after_relu(index, node.input[0])
    if op == "Mul":
        dynamic = _computed_inputs(index, node)
        if len(dynamic) == 1:  # scaled by a constant
            return _after_relu(index, dynamic[0])
        return len(dynamic) == 2 and any(_is_gate(index, name) for name in dynamic)
    if op == "Concat":
        return all(_after_relu(index, name) for name in node.input)
    return False


def _is_gate(index: onnxshrink.GraphIndex, tensor: str) -> bool:
    """A sigmoid-like gate: Erf, Sigmoid or Tanh, possibly shifted or scaled by constants."""
    node = index.producer(tensor)
    if node is None:
        return False
    if node.op_type in GATES:
        return True
    if node.op_type in ("Add", "Mul", "Div", "Sub"):
        dynamic = _computed_inputs(index, node)
        return len(dynamic) == 1 and _is_gate(index, dynamic[0])
    return False


def _computed_inputs(index: onnxshrink.GraphIndex, node: onnx.NodeProto) -> list[str]:
    """Inputs of ``node`` computed by other nodes (not initializers, graph inputs or Constant nodes)."""
    found = []
    for name in node.input:
        source = index.producer(name) if name else None
        if source is not None and source.op_type != "Constant":
            found.append(name)
    return found


@onnxshrink.hookimpl
def register_methods(register):
    register(ActivationPrune)
