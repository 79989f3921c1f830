"""Bias correction: add a per-output-channel vector to a Conv, Gemm or MatMul node's output.

The vector goes into the node's own bias when that bias is a constant read by this node alone
(Conv B, Gemm C with beta != 0, or the constant of the single Add that follows a MatMul), into a new
bias input when the node has none (Conv, Gemm), and otherwise into a new Add after the node.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

import onnxshrink
from onnxshrink import Use


def _float_attr(node: onnx.NodeProto, name: str, default: float) -> float:
    return next((a.f for a in node.attribute if a.name == name), default)


def _own_constant(model: onnx.ModelProto, use: Use) -> onnxshrink.WeightTensor | None:
    """The constant read by ``use`` when no other node reads it and it can be rewritten."""
    for tensor in onnxshrink.weight_tensors(model, {use.node.op_type: (use.index,)}):
        if tensor.name != use.node.input[use.index] or tensor.source == "overridable":
            continue
        if any(u.node is use.node and u.index == use.index for u in tensor.weight_uses) and len(tensor.uses) == 1:
            return tensor
    return None


def add_bias(model: onnx.ModelProto, use: Use, delta: np.ndarray, dtype: int) -> str:
    """Add ``delta`` (one value per output channel) to the output of ``use.node``; returns how."""
    node, graph = use.node, use.graph
    n = delta.size
    np_dtype = helper.tensor_dtype_to_np_dtype(dtype)
    if node.op_type == "Conv":
        if len(node.input) > 2 and node.input[2]:
            bias = _own_constant(model, Use(graph, node, 2))
            if bias is not None and bias.shape == (n,):
                bias.set_array(bias.array().astype(np.float32) + delta)
                return "bias"
        else:
            _new_input(model, graph, node, 2, delta.astype(np_dtype), "bias")
            return "new bias"
        rank = _conv_rank(node)
        return _add_after(model, graph, node, delta.reshape((n,) + (1,) * rank).astype(np_dtype))
    if node.op_type == "Gemm":
        beta = _float_attr(node, "beta", 1.0)
        if beta != 0 and len(node.input) > 2 and node.input[2]:
            bias = _own_constant(model, Use(graph, node, 2))
            if bias is not None and bias.shape in ((n,), (1, n)):
                bias.set_array(bias.array().astype(np.float32) + (delta / beta).reshape(bias.shape))
                return "bias"
        elif beta != 0:
            _new_input(model, graph, node, 2, (delta / beta).astype(np_dtype), "bias")
            return "new bias"
        return _add_after(model, graph, node, delta.astype(np_dtype))
    readers = onnxshrink.consumers(model, node.output[0])
    if len(readers) == 1 and readers[0].node.op_type == "Add" and not onnxshrink.is_graph_output(model, node.output[0]):
        add = readers[0]
        bias = _own_constant(model, Use(add.graph, add.node, 1 - add.index))
        if bias is not None and bias.shape and bias.shape[-1] == n and int(np.prod(bias.shape)) == n:
            bias.set_array(bias.array().astype(np.float32) + delta.reshape(bias.shape))
            return "bias"
    return _add_after(model, graph, node, delta.astype(np_dtype))


def _conv_rank(node: onnx.NodeProto) -> int:
    kernel = next((list(a.ints) for a in node.attribute if a.name == "kernel_shape"), None)
    return len(kernel) if kernel else 2


def _new_input(
    model: onnx.ModelProto, graph: onnx.GraphProto, node: onnx.NodeProto, index: int, values: np.ndarray, suffix: str
) -> None:
    name = onnxshrink.unique_name(onnxshrink.all_names(model), f"{node.name or node.output[0]}_{suffix}")
    graph.initializer.append(numpy_helper.from_array(values, name))
    while len(node.input) <= index:
        node.input.append("")
    node.input[index] = name


def _add_after(model: onnx.ModelProto, graph: onnx.GraphProto, node: onnx.NodeProto, values: np.ndarray) -> str:
    taken = onnxshrink.all_names(model)
    output = node.output[0]
    raw = onnxshrink.unique_name(taken, f"{output}_uncorrected")
    bias = onnxshrink.unique_name(taken, f"{output}_bias_correction")
    node.output[0] = raw
    graph.initializer.append(numpy_helper.from_array(values, bias))
    position = next(i for i, n in enumerate(graph.node) if n is node) + 1
    graph.node.insert(
        position,
        helper.make_node(
            "Add", [raw, bias], [output], name=onnxshrink.unique_name(taken, f"{output}_bias_correction_add")
        ),
    )
    return "new Add"
