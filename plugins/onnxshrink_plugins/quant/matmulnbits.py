"""Weight-only MatMul/Gemm as onnxruntime's ``com.microsoft::MatMulNBits`` (2, 4 or 8 bits, blocks along K).

The same kernel onnxruntime's DequantizeLinear → MatMul fusion produces, written directly so that
its ``accuracy_level`` is chosen in the file (the fused node takes the session's, 4 by default,
which quantizes activations to int8 and was slower than float on the AVX2 CPUs measured here), so
that a Gemm followed by an activation still gets the kernel (onnxruntime fuses Gemm + Relu first and
then leaves the DequantizeLinear unfused), and so that no opset upgrade is needed.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

import onnxshrink

from .forms import Scheme, drop_definition, matmul_layout, record, replace_node
from .targets import Target


def kernel_block(scheme: Scheme, k: int) -> tuple[int, str]:
    """The MatMulNBits block size for ``scheme`` on a reduction of ``k``, and a note when it differs."""
    if scheme.block_size:
        return scheme.block_size, ""
    block = max(16, 1 << (k - 1).bit_length())  # one block spanning K: per-channel scales
    if scheme.per_channel:
        return block, ""
    return block, "MatMulNBits has no per-tensor scale: one scale per output channel instead"


def matmulnbits_reason(target: Target, scheme: Scheme) -> str | None:
    """Why ``target`` cannot be written as MatMulNBits, or None."""
    transposed, reason = matmul_layout(target)
    if reason:
        return reason
    k = target.weight.shape[1 if transposed else 0]
    probe = onnxshrink.QuantizedTensor(
        np.zeros((k, 1), np.int8), np.ones((1, 1), np.float32), None, scheme.bits, 0, kernel_block(scheme, k)[0]
    )
    return onnxshrink.matmul_nbits_reason(probe)


def write_matmulnbits(
    model: onnx.ModelProto, target: Target, scheme: Scheme, taken: set[str], accuracy_level: int
) -> dict:
    """Quantize the weight in blocks along K and turn every reader into a MatMulNBits node."""
    weight = target.weight
    transposed, _ = matmul_layout(target)
    original = weight.array()
    matrix = np.asarray(original.T if transposed else original, dtype=np.float32)
    block, note = kernel_block(scheme, matrix.shape[0])
    qt = onnxshrink.quantize(matrix, scheme.bits, symmetric=scheme.symmetric, axis=0, block_size=block)
    shared = None
    inits: list[onnx.TensorProto] = []
    for use in target.uses:
        node = use.node
        bias = _bias(node, model, matrix.shape[1])
        nodes, new_inits = onnxshrink.matmul_nbits(
            qt, node.input[0], node.output[0], taken, bias=bias, accuracy_level=accuracy_level
        )
        if shared is None:
            shared = list(nodes[0].input[1:4])
            inits = new_inits
            weight.graph.initializer.extend(inits)
        else:  # every reader shares the first reader's packed weight, scales and zero points
            for i, name in enumerate(shared, start=1):
                if i < len(nodes[0].input) and nodes[0].input[i]:
                    nodes[0].input[i] = name
        nodes[0].name = node.name or nodes[0].name
        extra = node.input[2] if node.op_type == "Gemm" and len(node.input) > 2 and node.input[2] and not bias else None
        if extra:  # a bias MatMulNBits cannot take (not a 1-D constant of N): add it after
            product = onnxshrink.unique_name(taken, f"{node.output[0]}_product")
            nodes[0].output[0] = product
            nodes.append(
                helper.make_node(
                    "Add",
                    [product, extra],
                    [node.output[0]],
                    name=onnxshrink.unique_name(taken, f"{nodes[0].name}_bias"),
                )
            )
        replace_node(use, nodes)
    drop_definition(weight)
    _import_contrib_domain(model)
    if transposed:
        note = f"{note}; " if note else ""
        note += "stored (K, N) from a transB=1 Gemm"
    if accuracy_level:
        note = (f"{note}; " if note else "") + f"accuracy_level {accuracy_level}"
    return record(target, "matmulnbits", qt, matrix, inits, note)


def _bias(node: onnx.NodeProto, model: onnx.ModelProto, n: int) -> str | None:
    """The Gemm's C when it is a 1-D float32 initializer of N (MatMulNBits' bias input), else None."""
    if node.op_type != "Gemm" or len(node.input) < 3 or not node.input[2]:
        return None
    for g, _ in onnxshrink.iter_graphs(model.graph):
        for t in g.initializer:
            if t.name == node.input[2]:
                return t.name if list(t.dims) == [n] and t.data_type == onnx.TensorProto.FLOAT else None
    return None


def _import_contrib_domain(model: onnx.ModelProto) -> None:
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
