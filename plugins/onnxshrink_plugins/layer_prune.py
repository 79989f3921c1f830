"""layer_prune: remove the least important residual blocks, and nodes that do nothing."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

import onnxshrink
from onnxshrink import Method, Option, node_label


@dataclass
class ResidualBlock:
    """``y = x + f(x)`` ending at Add ``add``: ``branch`` is f(x), ``nodes`` the nodes computing it
    (read by nothing else)."""

    add: str
    x: str
    branch: str
    y: str
    nodes: list[str]
    score: float = float("nan")


class LayerPrune(Method):
    """Remove the least important residual blocks (y = x + f(x) becomes y = x) and no-op nodes.

    Residual blocks are found on the graph: an Add of a tensor x and a branch f(x) computed from x
    alone (and constants), whose nodes nothing else reads, with x, f(x) and y of one static shape.
    A transformer's attention and MLP sub-blocks and a ResNet's identity blocks qualify; blocks with a
    projection shortcut do not. (Symbolic dims such as the batch are not compared.) Each block is
    scored on the calibration data by its block influence
    1 - cos(x, y) (ShortGPT, Men et al. 2024; cosine per sample over all its features) or by
    ``score=norm``, the relative norm ||f(x)|| / ||x||, and the ``n`` lowest (or the ``ratio``
    lowest fraction, or those scoring under ``threshold``) are removed by wiring y to x; the branch
    is then dead and dropped. Scores come from the unpruned model (one shot). ``noop=true`` also
    removes Identity, Dropout (inference), Cast to the same type, Reshape to the same shape and
    Transpose with the identity permutation. Removing blocks changes the outputs: check accuracy.
    """

    name = "layer_prune"
    kind = "prune"
    options = (
        Option("n", int, 1, "Remove the n least important residual blocks (0: only no-op nodes).", min=0),
        Option("ratio", float, None, "Instead of n: remove this fraction of the residual blocks.", min=0.0, max=1.0),
        Option("threshold", float, None, "Instead of n: remove every block scoring below this.", min=0.0),
        Option(
            "score",
            str,
            "influence",
            "influence: 1 - cos(x, y) (ShortGPT); norm: ||f(x)|| / ||x||.",
            choices=("influence", "norm"),
        ),
        Option("exclude", list, None, "Names of residual Add nodes never to remove."),
        Option("noop", bool, True, "Also remove Identity, Dropout, and Cast/Reshape/Transpose that change nothing."),
    )
    # Searched by `onnxshrink tune` (docs/plugin-authors.md, "Search space"); other options keep their defaults.
    search_space = (onnxshrink.Tunable("n", low=0, high=4),)

    @classmethod
    def check_options(cls, values: onnxshrink.Options, given: set[str]) -> None:
        chosen = sorted(given & {"n", "ratio", "threshold"})
        if len(chosen) > 1:
            raise cls.option_error(f"give one of n, ratio or threshold, not {' and '.join(chosen)}")

    def apply(self, model: onnx.ModelProto, options: onnxshrink.Options, context: onnxshrink.Context) -> dict[str, Any]:
        blocks = residual_blocks(model)
        excluded = set(options.exclude or [])
        unknown = excluded - {b.add for b in blocks}
        if unknown:
            listing = ", ".join(b.add for b in blocks) or "(none)"
            raise onnxshrink.UsageError(
                f"plugin {self.name!r}: option 'exclude': no residual block ends at {sorted(unknown)[0]!r}; "
                f"blocks: {listing}"
            )
        candidates = [b for b in blocks if b.add not in excluded]
        wanted = _how_many(options, len(candidates))
        if candidates and (wanted or options.threshold is not None):
            _score(model, blocks, options.score, context)
        ranked = sorted(candidates, key=lambda b: b.score)  # stable: ties keep graph order
        if options.threshold is not None:
            chosen = [b for b in ranked if b.score < options.threshold]
        else:
            chosen = ranked[:wanted]
        chosen = _outermost(chosen)
        params_before, nodes_before = onnxshrink.parameter_count(model), len(model.graph.node)
        for block in chosen:
            _remove_block(model, block)
        noops = remove_noops(model) if options.noop else {}
        onnxshrink.tidy_model(model)
        if not chosen and not noops:
            context.warn(
                "no residual block removed and no no-op node found; the model is unchanged"
                if blocks
                else "no residual block and no no-op node found; the model is unchanged"
            )
        return {
            "score": options.score,
            "blocks": [
                {
                    "add": b.add,
                    "x": b.x,
                    "y": b.y,
                    "nodes": len(b.nodes),
                    "score": None if np.isnan(b.score) else round(b.score, 6),
                    "removed": b in chosen,
                }
                for b in blocks
            ],
            "removed_blocks": [b.add for b in chosen],
            "noop_removed": noops,
            "nodes_before": nodes_before,
            "nodes_after": len(model.graph.node),
            "params_before": params_before,
            "params_after": onnxshrink.parameter_count(model),
        }


def _how_many(options: onnxshrink.Options, count: int) -> int:
    if options.ratio is not None:
        return int(round(options.ratio * count))
    return min(options.n, count)


def residual_blocks(model: onnx.ModelProto) -> list[ResidualBlock]:
    """Every Add of the main graph that closes a residual block y = x + f(x), in graph order."""
    graph = model.graph
    index = onnxshrink.GraphIndex(graph)
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in set(node.input):
            readers.setdefault(name, []).append(node)
    outside = {o.name for o in graph.output} | _read_in_subgraphs(model)
    constants = {t.name for t in graph.initializer} - {i.name for i in graph.input}
    shapes = onnxshrink.inferred_shapes(model)
    blocks = []
    for node in graph.node:
        if (
            node.op_type != "Add"
            or node.domain not in ("", "ai.onnx")
            or len(node.input) != 2
            or node.input[0] == node.input[1]
        ):
            continue
        for x, branch in (node.input, reversed(node.input)):
            nodes = _branch_nodes(x, branch, index, readers, node, outside, constants)
            if nodes and _same_static_shape(shapes.get(x), shapes.get(branch), shapes.get(node.output[0])):
                blocks.append(
                    ResidualBlock(node_label(node), x, branch, node.output[0], [node_label(n) for n in nodes])
                )
                break
    return blocks


def _same_static_shape(*shapes: tuple | None) -> bool:
    """Known shapes of one rank whose static dims agree (symbolic dims such as the batch may differ in
    name: a Reshape with -1 makes a fresh one)."""
    if any(s is None for s in shapes) or len({len(s) for s in shapes}) != 1:
        return False
    return all(len({d for d in dims if isinstance(d, int)}) <= 1 for dims in zip(*shapes))


def _branch_nodes(x, branch, index, readers, add, outside, constants) -> list[onnx.NodeProto] | None:
    """The nodes computing ``branch`` from ``x`` and constants only, read by nothing but each other and
    ``add``; None when there are none."""
    after_x = _descendants(x, readers)
    start = index.producer(branch)
    if start is None or id(start) not in after_x:
        return None
    found = {id(start): start}
    stack = [start]
    while stack:
        node = stack.pop()
        for name in node.input:
            if not name or name == x or name in constants:
                continue
            source = index.producer(name)
            if source is not None and source.op_type == "Constant":
                continue
            if source is None or id(source) not in after_x:
                return None  # the branch reads a graph input or something computed before x
            if id(source) not in found:
                found[id(source)] = source
                stack.append(source)
    for node in found.values():
        for out in node.output:
            if out in outside or any(id(r) not in found and r is not add for r in readers.get(out, [])):
                return None
    return list(found.values())


def _descendants(name: str, readers) -> set[int]:
    seen: dict[int, onnx.NodeProto] = {}
    stack = list(readers.get(name, []))
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen[id(node)] = node
        for out in node.output:
            stack.extend(readers.get(out, []))
    return set(seen)


def _read_in_subgraphs(model: onnx.ModelProto) -> set[str]:
    names: set[str] = set()
    for g, outer in onnxshrink.iter_graphs(model.graph):
        if outer:
            for node in g.node:
                names.update(node.input)
    return names


def _score(model: onnx.ModelProto, blocks: list[ResidualBlock], score: str, context: onnxshrink.Context) -> None:
    feeds = context.calibration_feeds()
    if not feeds:
        raise onnxshrink.UsageError(
            f"plugin {context.plugin!r} needs calibration data to score residual blocks; pass --data"
        )
    if context.calibration_is_synthetic:
        context.warn("residual blocks were scored on random inputs (no --data given)")
    names = sorted({b.x for b in blocks} | {b.y for b in blocks})
    values = {
        name: np.concatenate(arrays, axis=0).astype(np.float64)
        for name, arrays in context.activations(model, names, feeds).items()
    }
    for block in blocks:
        x = values[block.x].reshape(len(values[block.x]), -1)
        y = values[block.y].reshape(len(values[block.y]), -1)
        x_norm, y_norm = np.linalg.norm(x, axis=1), np.linalg.norm(y, axis=1)
        if score == "influence":
            cosine = np.sum(x * y, axis=1) / np.maximum(x_norm * y_norm, 1e-30)
            block.score = float(1 - cosine.mean())
        else:
            block.score = float(np.mean(np.linalg.norm(y - x, axis=1) / np.maximum(x_norm, 1e-30)))


def _outermost(chosen: list[ResidualBlock]) -> list[ResidualBlock]:
    """Drop chosen blocks that sit inside another chosen block's branch (they go with it)."""
    inner = {name for b in chosen for name in b.nodes}
    return [b for b in chosen if b.add not in inner]


def _remove_block(model: onnx.ModelProto, block: ResidualBlock) -> None:
    """Wire y to x: readers of y read x (the Add's other input now; an earlier removal may have
    rewired it), or the Add becomes an Identity when y is a graph output."""
    add = next(n for n in model.graph.node if n.output and n.output[0] == block.y)
    x = next(name for name in add.input if name != block.branch)
    if onnxshrink.is_graph_output(model, block.y):
        add.op_type = "Identity"
        del add.input[:]
        add.input.append(x)
        return
    _rewire(model, block.y, x)
    model.graph.node.remove(add)


def _rewire(model: onnx.ModelProto, old: str, new: str) -> None:
    for use in onnxshrink.consumers(model, old):
        use.node.input[use.index] = new


def remove_noops(model: onnx.ModelProto) -> dict[str, int]:
    """Remove Identity, inference Dropout, and Cast/Reshape/Transpose that change nothing; counts by op."""
    removed: dict[str, int] = {}
    changed = True
    while changed:  # a pass per round of shape inference; bypassing one node keeps the others no-ops
        changed = False
        types, shapes = onnxshrink.inferred_types(model), onnxshrink.inferred_shapes(model)
        for node in [n for n in model.graph.node if _is_noop(model, n, types, shapes)]:
            if _bypass(model, node):
                removed[node.op_type] = removed.get(node.op_type, 0) + 1
                changed = True
    return dict(sorted(removed.items()))


def _is_noop(model: onnx.ModelProto, node: onnx.NodeProto, types: dict, shapes: dict) -> bool:
    if node.domain not in ("", "ai.onnx") or not node.input or not node.input[0]:
        return False
    op = node.op_type
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    if op == "Identity":
        return True
    if op == "Dropout":
        mask_used = len(node.output) > 1 and node.output[1] and onnxshrink.consumers(model, node.output[1])
        training = node.input[2] if len(node.input) > 2 else ""
        return not mask_used and (
            not training or _constant_value(model, training) is not None and not _constant_value(model, training).any()
        )
    if op == "Cast":
        return types.get(node.input[0]) == attrs.get("to")
    if op == "Transpose":
        perm = attrs.get("perm")
        return perm is not None and list(perm) == sorted(perm)
    if op == "Reshape":
        target = _constant_value(model, node.input[1])
        shape = shapes.get(node.input[0])
        return (
            target is not None
            and shape is not None
            and _same_shape(shape, [int(v) for v in target.ravel()], attrs.get("allowzero", 0))
        )
    return False


def _same_shape(shape: tuple, target: list[int], allowzero: int) -> bool:
    """Whether Reshape to ``target`` keeps ``shape``: each entry the same static size or 0 (copy), and at
    most one -1 that can only be the remaining size because every other entry matches."""
    if len(shape) != len(target) or allowzero and 0 in target or target.count(-1) > 1:
        return False
    return all(t == 0 or t == -1 or isinstance(d, int) and t == d for d, t in zip(shape, target))


def _bypass(model: onnx.ModelProto, node: onnx.NodeProto) -> bool:
    """Remove ``node`` (one input, first output used), wiring its readers to its input."""
    source, out = node.input[0], node.output[0]
    graph = model.graph
    if onnxshrink.is_graph_output(model, out):
        producer = onnxshrink.producer(graph, source)
        if producer is None or onnxshrink.is_graph_output(model, source):
            return False  # a graph input or output feeds it: the node must stay to keep both names
        producer.output[list(producer.output).index(source)] = out
        _rewire(model, source, out)
    else:
        _rewire(model, out, source)
    graph.node.remove(node)
    return True


def _constant_value(model: onnx.ModelProto, name: str) -> np.ndarray | None:
    for init in model.graph.initializer:
        if init.name == name:
            return None if any(i.name == name for i in model.graph.input) else onnx.numpy_helper.to_array(init)
    node = onnxshrink.producer(model.graph, name)
    value = None if node is None else onnxshrink.constant_value(node)
    return None if value is None else onnx.numpy_helper.to_array(value)


@onnxshrink.hookimpl
def register_methods(register):
    register(LayerPrune)
