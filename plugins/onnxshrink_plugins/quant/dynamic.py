"""Dynamic int8: activations quantized at run time in front of MatMul/Gemm with an int8 weight.

Writes the standard-op pattern onnxruntime's own ``quantize_dynamic`` writes and its CPU EP fuses
into ``com.microsoft::DynamicQuantizeMatMul`` (bias included):
``DynamicQuantizeLinear(x) → MatMulInteger(xq, Wq, x_zp, W_zp) → Cast → Mul(x_scale * W_scale) [→ Add(C)]``.
Written here rather than through ``quantize_dynamic`` so weights in Constant nodes, in If/Loop
branches and shared by several nodes are handled like any other.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import onnxshrink

from .forms import Scheme, drop_definition, matmul_layout, record, replace_node
from .targets import Target


def dynamic_reason(target: Target) -> str | None:
    """Why ``target`` cannot take the dynamic int8 form, or None."""
    _, reason = matmul_layout(target)
    if reason and reason.startswith("Conv"):
        return "Conv: dynamic int8 (ConvInteger) runs slower than float Conv on onnxruntime's CPU EP"
    return reason


def write_dynamic(
    model: onnx.ModelProto, target: Target, scheme: Scheme, taken: set[str], *, reduce_range: bool = False
) -> dict:
    """Store the weight as (K, N) int8 and rewrite every reader into the dynamic int8 pattern.

    ``reduce_range``: 7-bit values (±63), so that onnxruntime's uint8 x int8 kernels on x86 CPUs
    without VNNI cannot saturate their int16 pair sums (255 * 127 * 2 > 32767)."""
    weight = target.weight
    transposed, _ = matmul_layout(target)
    original = weight.array()
    matrix = (original.T if transposed else original).astype(np.float32)
    qt = onnxshrink.quantize(
        matrix, 7 if reduce_range else 8, symmetric=scheme.symmetric, axis=1 if scheme.per_channel else None
    )
    base = weight.name
    names = {key: onnxshrink.unique_name(taken, f"{base}_{key}") for key in ("quantized", "scale", "zero_point")}
    zero_point = qt.zero_point if qt.zero_point is not None else np.zeros(qt.scale.shape, np.int8)
    inits = [
        numpy_helper.from_array(qt.values, names["quantized"]),
        numpy_helper.from_array(qt.scale, names["scale"]),
        numpy_helper.from_array(zero_point, names["zero_point"]),
    ]
    weight.graph.initializer.extend(inits)
    for use in target.uses:
        replace_node(use, _pattern(use.node, names, taken))
    drop_definition(weight)
    return record(target, "dynamic", qt, matrix, inits, "stored transposed (K, N)" if transposed else "")


def _pattern(node: onnx.NodeProto, names: dict[str, str], taken: set[str]) -> list[onnx.NodeProto]:
    prefix = node.name or node.output[0]

    def fresh(suffix: str) -> str:
        return onnxshrink.unique_name(taken, f"{prefix}_{suffix}")

    xq, xs, xz = fresh("x_quantized"), fresh("x_scale"), fresh("x_zero_point")
    scale, acc, acc_f = fresh("scale"), fresh("int32"), fresh("int32_float")
    output = node.output[0]
    bias = node.input[2] if node.op_type == "Gemm" and len(node.input) > 2 and node.input[2] else None
    product = fresh("product") if bias else output
    nodes = [
        helper.make_node("DynamicQuantizeLinear", [node.input[0]], [xq, xs, xz], name=fresh("DynamicQuantizeLinear")),
        helper.make_node("Mul", [xs, names["scale"]], [scale], name=fresh("scale_Mul")),
        helper.make_node(
            "MatMulInteger", [xq, names["quantized"], xz, names["zero_point"]], [acc], name=fresh("MatMulInteger")
        ),
        helper.make_node("Cast", [acc], [acc_f], name=fresh("Cast"), to=TensorProto.FLOAT),
        helper.make_node("Mul", [acc_f, scale], [product], name=fresh("Mul") if bias else (node.name or fresh("Mul"))),
    ]
    if bias:
        nodes.append(helper.make_node("Add", [product, bias], [output], name=node.name or fresh("Add")))
    return nodes
