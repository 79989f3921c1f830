"""Channel groups of a model: channels that must be removed together, or why they may not be removed."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from onnxshrink.toolkit.channels.layout import Edit, GroupedInputEdit, SinkSlot, SliceEdit
from onnxshrink.toolkit.channels.propagation import propagate
from onnxshrink.toolkit.channels.state import Propagation, node_label


@dataclass(frozen=True)
class ChannelSlot:
    """Where a consumer reads a group's channels: along ``axis`` of ``tensor``, channel c covers positions
    ``offset + c * repeat`` to ``offset + c * repeat + repeat - 1``."""

    tensor: str
    axis: int
    offset: int
    repeat: int
    consumer: str

    def take(self, array: np.ndarray, size: int) -> np.ndarray:
        """The values of each channel in ``array`` (a value of ``tensor``), as ``[size, -1]``."""
        block = np.take(array, np.arange(self.offset, self.offset + size * self.repeat), axis=self.axis)
        block = np.moveaxis(block, self.axis, 0).reshape(size, self.repeat, -1)
        return block.reshape(size, -1)


@dataclass
class ChannelGroup:
    """Channels that are removed together: channel c of every member is the same channel.

    ``sources`` are the nodes producing the channels, ``sinks`` the nodes that contract them (their
    weights lose columns), ``slots`` where the sinks read them, ``weights`` the number of elements of
    the weight tensors (producers', consumers', depthwise) that shrink with the group. ``unit`` > 1: only whole
    aligned runs
    of ``unit`` channels can go (attention heads); ``blocks`` > 1: every one of ``blocks`` equal blocks
    must lose as many channels (grouped Conv). ``reasons`` says why the group is declined, if it is.
    """

    id: str
    size: int
    sources: list[str]
    sinks: list[str]
    tensors: list[str]
    slots: list[ChannelSlot]
    unit: int = 1
    blocks: int = 1
    reasons: list[str] = field(default_factory=list)
    weights: int = 0
    root: int = 0

    @property
    def prunable(self) -> bool:
        return not self.reasons

    @property
    def max_removable(self) -> int:
        """The most channels that can go while one unit (or one per block) stays."""
        return self.size - max(self.unit, self.blocks)

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "channels": self.size, "sources": self.sources, "sinks": self.sinks}
        if self.unit > 1:
            out["unit"] = self.unit
        if self.blocks > 1:
            out["blocks"] = self.blocks
        if self.reasons:
            out["reasons"] = self.reasons
        return out


class ChannelAnalysis:
    """The channel groups of ``model`` (the main graph; subgraphs are opaque readers).

    It stays bound to ``model``: :func:`remove_channels` edits that model, after which the analysis is
    spent. Groups come in graph order (by their first source).
    """

    def __init__(
        self, model: onnx.ModelProto, state: Propagation, groups: list[ChannelGroup], edits: dict[int, list[Edit]]
    ):
        self.model = model
        self.groups = groups
        self._state = state
        self._edits = edits
        self._by_id = {g.id: g for g in groups}
        self.spent = False

    @property
    def prunable(self) -> list[ChannelGroup]:
        return [g for g in self.groups if g.prunable]

    @property
    def declined(self) -> list[ChannelGroup]:
        return [g for g in self.groups if not g.prunable]

    def group(self, group_id: str) -> ChannelGroup:
        if group_id not in self._by_id:
            raise KeyError(f"no channel group {group_id!r}; groups: {', '.join(self._by_id) or '(none)'}")
        return self._by_id[group_id]

    def edits(self, group: ChannelGroup) -> list[Edit]:
        return self._edits[group.root]

    def describe(self) -> dict[str, Any]:
        return {
            "groups": len(self.groups),
            "prunable": [g.describe() for g in self.prunable],
            "declined": [g.describe() for g in self.declined],
        }


def analyze_channels(model: onnx.ModelProto) -> ChannelAnalysis:
    """Group the channels of ``model`` that must be removed together, and decline the groups whose
    removal cannot be shown to be safe (each with its reasons)."""
    state = propagate(model)
    atoms = state.atoms
    classes = atoms.members()
    edits_by_root: dict[int, list[Edit]] = {}
    for edit in state.edits:
        edits_by_root.setdefault(atoms.find(edit.atom), []).append(edit)
    slots_by_root: dict[int, list[SinkSlot]] = {}
    for slot in state.slots:
        slots_by_root.setdefault(atoms.find(slot.atom), []).append(slot)

    groups = []
    for root, members in classes.items():
        sources = sorted({atoms.source[a] for a in members if atoms.source[a] is not None})
        if not sources:
            continue
        reasons = list(dict.fromkeys(r for a in members for r in atoms.reasons[a]))
        unit = math.lcm(*(atoms.unit[a] for a in members))
        blocks = math.lcm(*(atoms.blocks[a] for a in members))
        size = atoms.size[root]
        if unit > 1 and blocks > 1:
            reasons.append("channels are both attention heads and grouped-Conv blocks")
        elif size % unit or size % blocks:
            reasons.append(f"{size} channels do not divide into units of {unit} / {blocks} blocks")
        edits = edits_by_root.get(root, [])
        sink_nodes = sorted(
            {e.node for e in edits if isinstance(e, GroupedInputEdit) or isinstance(e, SliceEdit) and e.role == "sink"}
        )
        slots = [
            ChannelSlot(s.tensor, s.axis, s.offset, s.repeat, node_label(state.nodes[s.node]))
            for s in sorted(slots_by_root.get(root, []), key=lambda s: (s.node, s.offset))
        ]
        weight_slots = {
            (e.node, e.input if isinstance(e, SliceEdit) else 1)
            for e in edits
            if isinstance(e, GroupedInputEdit) or isinstance(e, SliceEdit) and e.role != "param"
        }
        weight_sizes = [state.const(state.nodes[n].input[k]) for n, k in sorted(weight_slots)]
        groups.append(
            ChannelGroup(
                id=node_label(state.nodes[sources[0]]),
                size=size,
                sources=[node_label(state.nodes[n]) for n in sources],
                sinks=[node_label(state.nodes[n]) for n in sink_nodes],
                tensors=list(dict.fromkeys(t for a in members for t in state.tensors.get(a, []))),
                slots=slots,
                unit=unit,
                blocks=blocks,
                reasons=reasons,
                weights=sum(int(w.size) for w in weight_sizes if w is not None),
                root=root,
            )
        )
        edits_by_root.setdefault(root, [])
    groups.sort(key=lambda g: min(atoms.source[a] for a in classes[g.root] if atoms.source[a] is not None))
    return ChannelAnalysis(model, state, groups, edits_by_root)


def channel_importance(analysis: ChannelAnalysis, group: ChannelGroup, norm: str = "l1") -> np.ndarray:
    """Per channel, the L1 or L2 norm of every weight coupled to it (the producers' filters, depthwise
    filters and the consumers' columns, as Torch-Pruning's group norm): ``[group.size]`` floats."""
    if norm not in ("l1", "l2"):
        raise ValueError(f"norm must be 'l1' or 'l2', not {norm!r}")
    state = analysis._state
    total = np.zeros(group.size, dtype=np.float64)
    for edit in analysis.edits(group):
        node = state.nodes[edit.node]
        if isinstance(edit, SliceEdit) and edit.role in ("source", "sink", "depthwise"):
            weight = state.const(node.input[edit.input])
            if weight is None or weight.ndim < 2:
                continue
            block = np.take(
                weight.astype(np.float64),
                np.arange(edit.offset, edit.offset + group.size * edit.repeat),
                axis=edit.axis,
            )
            rows = np.moveaxis(block, edit.axis, 0).reshape(group.size, -1)
        elif isinstance(edit, GroupedInputEdit):
            weight = state.const(node.input[1]).astype(np.float64)
            per_group_out, per_group_in = weight.shape[0] // edit.groups, weight.shape[1]
            rows = np.stack(
                [
                    weight[
                        (c // per_group_in) * per_group_out : (c // per_group_in + 1) * per_group_out, c % per_group_in
                    ].ravel()
                    for c in range(group.size)
                ]
            )
        else:
            continue
        total += np.abs(rows).sum(axis=1) if norm == "l1" else np.square(rows).sum(axis=1)
    return total if norm == "l1" else np.sqrt(total)


def select_channels(group: ChannelGroup, scores: Sequence[float] | np.ndarray, count: int) -> list[int]:
    """The ``count`` lowest-scoring channels of ``group`` that may go together, rounded down to whole
    units (attention heads: a unit scores the sum of its channels) or to as many per block (grouped
    Conv), never more than :attr:`ChannelGroup.max_removable`. Ties go to the lower index."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != (group.size,):
        raise ValueError(f"group {group.id!r}: {scores.shape} scores for {group.size} channels")
    count = max(0, min(int(count), group.max_removable))
    if group.unit > 1:
        unit_scores = scores.reshape(-1, group.unit).sum(axis=1)
        units = np.argsort(unit_scores, kind="stable")[: count // group.unit]
        chosen = (units[:, None] * group.unit + np.arange(group.unit)).ravel()
    elif group.blocks > 1:
        width = group.size // group.blocks
        per_block = count // group.blocks
        chosen = np.concatenate(
            [
                b * width + np.argsort(scores[b * width : (b + 1) * width], kind="stable")[:per_block]
                for b in range(group.blocks)
            ]
        )
    else:
        chosen = np.argsort(scores, kind="stable")[:count]
    return sorted(int(c) for c in chosen)


def check_removal(group: ChannelGroup, channels: Sequence[int]) -> str | None:
    """Why removing ``channels`` from ``group`` is not allowed, or None."""
    chosen = sorted(set(int(c) for c in channels))
    if len(chosen) != len(channels):
        return "channel indices repeat"
    if chosen and (chosen[0] < 0 or chosen[-1] >= group.size):
        return f"channel indices must be in 0..{group.size - 1}"
    if len(chosen) > group.max_removable:
        return f"at most {group.max_removable} of {group.size} channels can be removed"
    if group.unit > 1:
        units = {c // group.unit for c in chosen}
        if len(chosen) != len(units) * group.unit:
            return f"channels must go in whole units of {group.unit} (attention heads)"
    if group.blocks > 1:
        width = group.size // group.blocks
        counts = {b: 0 for b in range(group.blocks)}
        for c in chosen:
            counts[c // width] += 1
        if len(set(counts.values())) > 1:
            return f"each of the {group.blocks} groups of the grouped Conv must lose as many channels"
    return None
