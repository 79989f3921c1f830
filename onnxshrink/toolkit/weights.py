"""Graph helpers every method needs, on ``onnx.ModelProto``.

They see weights wherever real exported models keep them: initializers, ``Constant`` nodes, tensors
shared by several nodes, initializers that are also graph inputs, and subgraphs of If/Loop/Scan that
read tensors of an outer scope.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from onnxshrink.ir.external import tensor_array
from onnxshrink.ir.tensors import FLOAT_TYPES
from onnxshrink.ir.walk import all_names, constant_value, iter_graphs, node_label, unique_name

# Which inputs of an op hold weights. Ops are ONNX's, not any method's.
DEFAULT_WEIGHT_INPUTS: Mapping[str, tuple[int, ...]] = {
    "Conv": (1,),
    "ConvTranspose": (1,),
    "Gemm": (0, 1),
    "MatMul": (0, 1),
}


EMBEDDING_INPUTS: Mapping[str, tuple[int, ...]] = {"Gather": (0,)}


@dataclass(frozen=True)
class Use:
    """One input slot that reads a tensor: ``node.input[index]`` in ``graph``."""

    graph: onnx.GraphProto
    node: onnx.NodeProto
    index: int


@dataclass
class WeightTensor:
    """A constant float tensor read by weighted ops, and where it is defined.

    ``source`` is ``initializer``, ``constant`` (a Constant node's ``value``) or ``overridable``
    (an initializer that is also a graph input, so a caller could feed another value).
    ``weight_uses`` are the slots named in the query (e.g. Conv input 1); ``other_uses`` are every other
    reader (a weight that also feeds an Add, say).
    """

    name: str
    source: str
    graph: onnx.GraphProto
    proto: onnx.TensorProto
    constant_node: onnx.NodeProto | None = None
    weight_uses: list[Use] = field(default_factory=list)
    other_uses: list[Use] = field(default_factory=list)
    in_subgraph: bool = False

    @property
    def uses(self) -> list[Use]:
        return self.weight_uses + self.other_uses

    @property
    def op_types(self) -> list[str]:
        return sorted({u.node.op_type for u in self.weight_uses})

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.proto.dims)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1

    @property
    def dtype(self) -> int:
        return self.proto.data_type

    @property
    def nbytes(self) -> int:
        """Bytes of the values as stored (elements times the element size), without reading them."""
        return self.size * np.dtype(onnx.helper.tensor_dtype_to_np_dtype(self.dtype)).itemsize

    def array(self) -> np.ndarray:
        return tensor_array(self.proto)

    def set_array(self, values: np.ndarray) -> None:
        """Overwrite the values for every reader (the tensor keeps its name, dtype and place)."""
        values = np.asarray(values)
        if tuple(values.shape) != self.shape:
            raise ValueError(f"tensor {self.name!r}: new shape {values.shape} != {self.shape}")
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(self.dtype))
        values = values.astype(dtype, copy=False)
        if dtype.kind in "fiub":  # plain numpy layout (not bfloat16 or float8): raw bytes as they are
            proto = self.proto
            for field_name in (
                "float_data",
                "int32_data",
                "int64_data",
                "double_data",
                "uint64_data",
                "external_data",
                "data_location",
            ):
                proto.ClearField(field_name)
            proto.raw_data = np.ascontiguousarray(values).astype(dtype.newbyteorder("<"), copy=False).tobytes()
            proto.name = proto.name or self.name
            return
        self.proto.CopyFrom(numpy_helper.from_array(values, self.name))


def _definitions(g: onnx.GraphProto) -> dict[str, tuple[str, onnx.TensorProto, onnx.NodeProto | None]]:
    inputs = {i.name for i in g.input}
    defs: dict[str, tuple[str, onnx.TensorProto, onnx.NodeProto | None]] = {}
    for init in g.initializer:
        defs[init.name] = ("overridable" if init.name in inputs else "initializer", init, None)
    for node in g.node:
        value = constant_value(node)
        if value is not None and node.output:
            defs[node.output[0]] = ("constant", value, node)
    return defs


def _locally_bound(g: onnx.GraphProto) -> set[str]:
    """Names a graph binds itself (so an outer tensor of that name is shadowed)."""
    bound = {i.name for i in g.input} | {t.name for t in g.initializer}
    for node in g.node:
        bound.update(node.output)
    return bound


def weight_tensors(
    model: onnx.ModelProto,
    op_inputs: Mapping[str, Sequence[int]] = DEFAULT_WEIGHT_INPUTS,
    *,
    float_only: bool = True,
) -> list[WeightTensor]:
    """Constant tensors read by the given op inputs, each once, in a deterministic order.

    ``op_inputs`` maps an op type to the input indices that hold weights (default: Conv and
    ConvTranspose W, Gemm A/B, MatMul A/B). Shared tensors appear once with all their uses.
    """
    found: dict[tuple[int, str], WeightTensor] = {}
    order: list[tuple[int, str]] = []
    graphs = list(iter_graphs(model.graph))
    main = graphs[0][0]
    defs_by_graph = {id(g): _definitions(g) for g, _ in graphs}
    bound_by_graph = {id(g): _locally_bound(g) for g, _ in graphs}

    def resolve(name: str, g: onnx.GraphProto, outer: tuple[onnx.GraphProto, ...]):
        for scope in (g, *outer):
            defs = defs_by_graph[id(scope)]
            if name in defs:
                return scope, defs[name]
            if name in bound_by_graph[id(scope)]:
                return None  # bound to something that is not a constant
        return None

    for g, outer in graphs:
        for node in g.node:
            wanted = set(op_inputs.get(node.op_type, ())) if node.domain in ("", "ai.onnx") else set()
            for index, name in enumerate(node.input):
                if not name:
                    continue
                hit = resolve(name, g, outer)
                if hit is None:
                    continue
                scope, (source, proto, const_node) = hit
                key = (id(scope), name)
                use = Use(g, node, index)
                if key not in found:
                    if float_only and proto.data_type not in FLOAT_TYPES:
                        continue
                    found[key] = WeightTensor(name, source, scope, proto, const_node, in_subgraph=scope is not main)
                    order.append(key)
                (found[key].weight_uses if index in wanted else found[key].other_uses).append(use)
    return [found[k] for k in order if found[k].weight_uses]


def consumers(model: onnx.ModelProto, name: str) -> list[Use]:
    """Every node input slot that reads ``name`` (subgraphs included)."""
    return [
        Use(g, node, i)
        for g, _ in iter_graphs(model.graph)
        for node in g.node
        for i, inp in enumerate(node.input)
        if inp == name
    ]


def unknown_exclusions(model: onnx.ModelProto, exclude: Iterable[str]) -> list[str]:
    """The ``exclude`` entries that match no node label, op type or tensor read by a node of ``model``."""
    known: set[str] = set()
    for g, _ in iter_graphs(model.graph):
        for node in g.node:
            known.update({node_label(node), node.op_type, *node.input})
    return [e for e in exclude if e not in known]


def weight_axes(use: Use, rank: int) -> tuple[int, int]:
    """(output-channel axis, reduction axis) of the weight of rank ``rank`` read by ``use``."""
    node, index = use.node, use.index
    attrs = {a.name: a.i for a in node.attribute if a.type == onnx.AttributeProto.INT}
    if node.op_type == "Conv":
        return 0, 1
    if node.op_type == "ConvTranspose":
        return 1, 0
    if node.op_type == "Gemm":
        transposed = attrs.get("transB" if index == 1 else "transA", 0)
        if index == 1:
            return (0, 1) if transposed else (1, 0)
        return (1, 0) if transposed else (0, 1)
    if node.op_type == "Gather":
        return 0, 1
    if node.op_type in ("LSTM", "GRU", "RNN"):  # W, R: (directions, gates x hidden, inputs)
        return 1, 2
    if node.op_type in ("Einsum", "Reshape"):  # no channel meaning: first axis for scales, last for blocks
        return 0, rank - 1
    # MatMul: B (..., K, N) has channels on the last axis; a constant A (..., M, K) on the one before.
    return (rank - 1, rank - 2) if index == 1 else (rank - 2, rank - 1)


def replace_weight(
    model: onnx.ModelProto,
    weight: WeightTensor,
    nodes: Sequence[onnx.NodeProto] = (),
    initializers: Sequence[onnx.TensorProto] = (),
    uses: Sequence[Use] | None = None,
) -> str:
    """Compute ``weight`` from new ``nodes`` and ``initializers`` instead of storing it.

    The last node must output ``weight.name``; the nodes go where the weight was defined, so every
    reader (in subgraphs too) keeps working. Given ``uses`` (a subset of the readers), the other readers
    keep the original tensor: the new nodes then output a fresh name, wired into those uses only, and
    that name is returned. Overridable weights (graph inputs) cannot be replaced.
    """
    if weight.source == "overridable":
        raise ValueError(f"tensor {weight.name!r} is a graph input; it cannot be replaced by a subgraph")
    if not nodes or nodes[-1].output[-1] != weight.name:
        raise ValueError(f"the last new node must output {weight.name!r}")
    g = weight.graph
    target = weight.name
    partial = uses is not None and {(id(u.node), u.index) for u in uses} != {(id(u.node), u.index) for u in weight.uses}
    if partial:
        target = unique_name(all_names(model), f"{weight.name}_replaced")
        nodes[-1].output[-1] = target
        for u in uses:
            u.node.input[u.index] = target
    else:
        _remove_definition(weight)
    position = 0
    if weight.constant_node is not None and not partial:
        position = 0  # Constant nodes removed; new nodes lead the graph (inputs are all constants)
    for offset, node in enumerate(nodes):
        g.node.insert(position + offset, node)
    g.initializer.extend(initializers)
    return target


def _remove_definition(weight: WeightTensor) -> None:
    g = weight.graph
    if weight.constant_node is not None:
        for i, node in enumerate(g.node):
            if node is weight.constant_node:
                del g.node[i]
                return
    for i, init in enumerate(g.initializer):
        if init.name == weight.name:
            del g.initializer[i]
            return
