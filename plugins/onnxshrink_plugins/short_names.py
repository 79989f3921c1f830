"""short_names: rename every intermediate tensor and node to a short unique name (lossless)."""

from __future__ import annotations

from typing import Any

import onnx

import onnxshrink
from onnxshrink import Method, Option

TENSOR_PREFIX = "t"
NODE_PREFIX = "n"


def base36(number: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    text = ""
    while True:
        number, digit = divmod(number, 36)
        text = digits[digit] + text
        if not number:
            return text


class ShortNames(Method):
    """Rename every intermediate tensor and node to a short name (t0, t1..., n0, n1...): a smaller file, same outputs.

    Exporters name tensors and nodes by their source path (tf2onnx writes names like
    ``model_1/re_lu_3/Relu;model_1/batch_normalization_3/FusedBatchNormV3``), often a large part of a
    small model's file. Every tensor (node outputs, initializers, subgraph inputs and outputs,
    value_info entries, quantization annotations) gets ``t`` plus a base-36 counter in graph order,
    every named node ``n`` plus a counter; subgraphs (If/Loop/Scan bodies) are renamed with the same
    map, so the outer-scope names they read stay consistent. The model's interface (main graph
    inputs and outputs) and the names in ``keep`` stay as they are, and no new name equals one of
    them. Metadata, opsets, functions and external data are untouched. ``doc_strings=true`` also
    clears the doc strings of nodes, graphs and their inputs/outputs. Lossless: outputs are
    bit-identical. The cost is debuggability: the old names are gone, and the stats do not keep them.
    Models with ``training_info`` are left unchanged.
    """

    name = "short_names"
    kind = "transform"
    lossless = True
    options = (
        Option("doc_strings", bool, True, "Also clear the doc strings of nodes, graphs and graph inputs/outputs."),
        Option("keep", list, None, "Tensor or node names to keep as they are (names a later tool needs)."),
    )

    def apply(self, model: onnx.ModelProto, options: onnxshrink.Options, context: onnxshrink.Context) -> dict[str, Any]:
        keep = set(options.keep or ())
        unknown = sorted(keep - onnxshrink.all_names(model))
        if unknown:
            raise self.option_error(f"keep entry {unknown[0]!r} names no tensor or node of the model")
        bytes_before = model.ByteSize()
        if len(model.training_info):
            context.warn("the model has training_info, which refers to tensor names; names left unchanged")
            return {"tensors_renamed": 0, "nodes_renamed": 0, "doc_strings_cleared": 0, "bytes_saved": 0}
        graphs = [g for g, _ in onnxshrink.iter_graphs(model.graph)]
        interface = {v.name for v in model.graph.input} | {v.name for v in model.graph.output}
        taken = keep | interface
        tensors = _tensor_map(graphs, taken)
        nodes = _node_map(graphs, keep, taken)
        for graph in graphs:
            _rename_graph(graph, tensors, nodes)
        cleared = _clear_doc_strings(graphs) if options.doc_strings else 0
        bytes_after = model.ByteSize()
        return {
            "tensors_renamed": sum(old != new for old, new in tensors.items()),
            "nodes_renamed": sum(old != new for old, new in nodes.items()),
            "names_kept": len(taken),
            "doc_strings_cleared": cleared,
            "proto_bytes_before": bytes_before,
            "proto_bytes_after": bytes_after,
            "bytes_saved": bytes_before - bytes_after,
        }


def _tensor_names(graph: onnx.GraphProto):
    """Every tensor name of one graph (not its subgraphs), in a fixed order."""
    yield from (v.name for v in graph.input)
    yield from (t.name for t in graph.initializer)
    yield from (s.values.name for s in graph.sparse_initializer)
    for node in graph.node:
        yield from node.input
        yield from node.output
    yield from (v.name for v in graph.output)
    yield from (v.name for v in graph.value_info)
    for annotation in graph.quantization_annotation:
        yield annotation.tensor_name
        yield from (p.value for p in annotation.quant_parameter_tensor_names)


def _fresh_names(prefix: str, taken: set[str]):
    counter = 0
    while True:
        name = prefix + base36(counter)
        counter += 1
        if name not in taken:
            yield name


def _tensor_map(graphs: list[onnx.GraphProto], taken: set[str]) -> dict[str, str]:
    """Old → new tensor name: names in ``taken`` map to themselves, the rest to fresh ``t`` names in first-seen order.

    One map for all graphs: it is injective, so every scope (a subgraph reading an outer name, two
    branches binding the same local name) resolves exactly as before."""
    fresh = _fresh_names(TENSOR_PREFIX, taken)
    mapping: dict[str, str] = {"": ""}
    for graph in graphs:
        for name in _tensor_names(graph):
            if name not in mapping:
                mapping[name] = name if name in taken else next(fresh)
    del mapping[""]
    return mapping


def _node_map(graphs: list[onnx.GraphProto], keep: set[str], taken: set[str]) -> dict[str, str]:
    """Old → new node name: names in ``keep`` stay, the rest get fresh ``n`` names that avoid ``taken``
    (a node named like a graph output is renamed too)."""
    fresh = _fresh_names(NODE_PREFIX, taken)
    mapping: dict[str, str] = {}
    for graph in graphs:
        for node in graph.node:
            if node.name and node.name not in mapping:
                mapping[node.name] = node.name if node.name in keep else next(fresh)
    return mapping


def _rename_graph(graph: onnx.GraphProto, tensors: dict[str, str], nodes: dict[str, str]) -> None:
    def new(name: str) -> str:
        return tensors.get(name, name)

    for value in (*graph.input, *graph.output, *graph.value_info):
        value.name = new(value.name)
    for tensor in graph.initializer:
        tensor.name = new(tensor.name)
    for sparse in graph.sparse_initializer:
        sparse.values.name = new(sparse.values.name)
    for node in graph.node:
        node.input[:] = [new(n) for n in node.input]
        node.output[:] = [new(n) for n in node.output]
        if node.name:
            node.name = nodes[node.name]
    for annotation in graph.quantization_annotation:
        annotation.tensor_name = new(annotation.tensor_name)
        for param in annotation.quant_parameter_tensor_names:
            param.value = new(param.value)


def _clear_doc_strings(graphs: list[onnx.GraphProto]) -> int:
    cleared = 0
    for graph in graphs:
        for item in (graph, *graph.node, *graph.input, *graph.output, *graph.value_info):
            if item.doc_string:
                item.doc_string = ""
                cleared += 1
    return cleared


@onnxshrink.hookimpl
def register_methods(register):
    register(ShortNames)
