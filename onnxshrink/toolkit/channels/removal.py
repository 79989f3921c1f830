"""Remove channels of analysed groups physically: every producer, consumer and parameter is resized."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper

from onnxshrink.ir.tensors import parameter_count
from onnxshrink.ir.walk import node_attribute as attr
from onnxshrink.toolkit.channels.analysis import ChannelAnalysis, check_removal
from onnxshrink.toolkit.channels.constants import Constants
from onnxshrink.toolkit.channels.layout import AttrEdit, GroupedInputEdit, ShapeEdit, SliceEdit
from onnxshrink.toolkit.channels.state import Propagation
from onnxshrink.toolkit.tidy import tidy_model


@dataclass
class SinkChange:
    """A consumer whose input channels shrank: ``kept`` positions (of ``width``) along ``axis`` of its
    input ``tensor`` remain. ``node`` is the consumer's first output name (stable across edits)."""

    node: str
    op_type: str
    tensor: str
    axis: int
    width: int
    kept: np.ndarray
    grouped: bool = False

    @property
    def removed(self) -> np.ndarray:
        return np.setdiff1d(np.arange(self.width), self.kept)


@dataclass
class ChannelRemoval:
    """What :func:`remove_channels` did: removed channels per group, consumers whose inputs shrank (for
    reconstruction), the output channels each resized producer kept (by first output name), and the
    model's parameter count (elements of float tensors, subgraphs included) before and after."""

    removed: dict[str, list[int]]
    sinks: list[SinkChange] = field(default_factory=list)
    kept_outputs: dict[str, np.ndarray] = field(default_factory=dict)
    params_before: int = 0
    params_after: int = 0


def remove_channels(analysis: ChannelAnalysis, selection: Mapping[str, Sequence[int]]) -> ChannelRemoval:
    """Remove ``selection`` (group id → channel indices) from the analysed model, in place.

    Raises ValueError for a declined or unknown group or indices the group does not allow. The analysis
    is spent afterwards (analyse the edited model again to prune more).
    """
    if analysis.spent:
        raise ValueError("this channel analysis was already used to remove channels; analyse the model again")
    state = analysis._state
    model, nodes = analysis.model, state.nodes
    if list(model.graph.node) != nodes:
        raise ValueError("the model changed since it was analysed; analyse it again")
    removed_by_root: dict[int, np.ndarray] = {}
    removed: dict[str, list[int]] = {}
    for group_id, channels in selection.items():
        group = analysis.group(group_id)
        if not group.prunable:
            raise ValueError(f"channel group {group_id!r} is declined: {'; '.join(group.reasons)}")
        problem = check_removal(group, channels)
        if problem:
            raise ValueError(f"channel group {group_id!r}: {problem}")
        if len(channels):
            removed_by_root[group.root] = np.array(sorted(int(c) for c in channels), dtype=np.int64)
            removed[group_id] = sorted(int(c) for c in channels)
    analysis.spent = True

    slices: dict[tuple[int, int], dict[int, set[int]]] = {}
    grouped: dict[int, tuple[int, set[int]]] = {}
    shape_deltas: dict[tuple[int, int, int], int] = {}
    attr_deltas: dict[tuple[int, str], int] = {}
    sink_positions: dict[int, set[int]] = {}
    source_positions: dict[int, set[int]] = {}
    atoms = state.atoms
    for root, channels in removed_by_root.items():
        for edit in analysis._edits[root]:
            if isinstance(edit, SliceEdit):
                positions = _positions(edit.offset, edit.repeat, channels)
                slices.setdefault((edit.node, edit.input), {}).setdefault(edit.axis, set()).update(positions)
                if edit.role == "sink":
                    sink_positions.setdefault(edit.node, set()).update(positions)
                elif edit.role in ("source", "depthwise"):
                    source_positions.setdefault(edit.node, set()).update(positions)
            elif isinstance(edit, GroupedInputEdit):
                grouped[edit.node] = (edit.groups, set(channels.tolist()))
                sink_positions.setdefault(edit.node, set()).update(channels.tolist())
            elif isinstance(edit, ShapeEdit):
                key = (edit.node, edit.input, edit.position)
                shape_deltas[key] = shape_deltas.get(key, 0) + len(channels) * edit.numer // edit.denom
            elif isinstance(edit, AttrEdit):
                attr_deltas[(edit.node, edit.name)] = (
                    attr_deltas.get((edit.node, edit.name), 0) + len(channels) * edit.numer
                )

    constants = Constants(model)
    record = ChannelRemoval(removed, params_before=parameter_count(model))
    for index, positions in sorted(sink_positions.items()):
        record.sinks.append(_sink_change(state, constants, index, positions, index in grouped))
    for index, positions in sorted(source_positions.items()):
        node = nodes[index]
        width = _output_width(constants, node)
        record.kept_outputs[node.output[0]] = np.setdiff1d(np.arange(width), sorted(positions))

    for (index, slot), by_axis in sorted(slices.items()):
        node = nodes[index]
        value = constants.get(node.input[slot])
        for axis, positions in sorted(by_axis.items()):
            value = np.delete(value, sorted(positions), axis=axis)
        if slot == 1 and index in grouped:
            value = _drop_grouped_columns(value, *grouped.pop(index))
        constants.write(node, slot, value)
    for index, (groups, channels) in sorted(grouped.items()):
        node = nodes[index]
        constants.write(node, 1, _drop_grouped_columns(constants.get(node.input[1]), groups, channels))
    for (index, slot, position), delta in sorted(shape_deltas.items()):
        node = nodes[index]
        value = constants.get(node.input[slot]).copy()
        value.reshape(-1)[position] -= delta
        constants.write(node, slot, value)
    for (index, name), delta in sorted(attr_deltas.items()):
        node = nodes[index]
        current = next(a for a in node.attribute if a.name == name)
        current.CopyFrom(helper.make_attribute(name, current.i - delta))

    members = atoms.members()
    changed = {t for root in removed_by_root for m in members[root] for t in state.tensors.get(m, [])}
    stale = [k for k, info in enumerate(model.graph.value_info) if info.name in changed]
    for k in reversed(stale):
        del model.graph.value_info[k]
    tidy_model(model)
    record.params_after = parameter_count(model)
    return record


def _positions(offset: int, repeat: int, channels: np.ndarray) -> list[int]:
    return (offset + channels[:, None] * repeat + np.arange(repeat)).ravel().tolist()


def _drop_grouped_columns(weight: np.ndarray, groups: int, channels: set[int]) -> np.ndarray:
    """A grouped Conv weight without the input channels ``channels`` (as many per group)."""
    per_in = weight.shape[1]
    per_out = weight.shape[0] // groups
    parts = []
    for g in range(groups):
        drop = [c - g * per_in for c in sorted(channels) if g * per_in <= c < (g + 1) * per_in]
        parts.append(np.delete(weight[g * per_out : (g + 1) * per_out], drop, axis=1))
    return np.concatenate(parts, axis=0)


def _output_width(constants: Constants, node: onnx.NodeProto) -> int:
    weight = constants.get(node.input[1])
    if node.op_type == "Conv":
        return weight.shape[0]
    if node.op_type == "ConvTranspose":
        return weight.shape[1] * attr(node, "group", 1)
    if node.op_type == "Gemm" and attr(node, "transB", 0):
        return weight.shape[0]
    return weight.shape[-1]


def _sink_change(
    state: Propagation, constants: Constants, index: int, positions: set[int], grouped: bool
) -> SinkChange:
    node = state.nodes[index]
    weight = constants.get(node.input[1])
    if node.op_type == "Conv":
        axis, width = 1, weight.shape[1] * attr(node, "group", 1)
    elif node.op_type == "ConvTranspose":
        axis, width = 1, weight.shape[0]
    elif node.op_type == "Gemm":
        axis, width = 1, weight.shape[1 if attr(node, "transB", 0) else 0]
    else:  # MatMul
        axis, width = state.rank(node.input[0]) - 1, weight.shape[0]
    kept = np.setdiff1d(np.arange(width), sorted(positions))
    return SinkChange(node.output[0], node.op_type, node.input[0], axis, width, kept, grouped)
