"""Float constants that only ``Shape``/``Size`` read: their values are never used, only their dims.

Exporters (tf2onnx's constant folding, for one) leave such tensors behind; a character BERT in the
zoo keeps 30% of its file in them. Each one becomes ``ConstantOfShape(dims)``: the same dtype and
shape, zero bytes of values, and onnxruntime folds it at load like any constant subgraph.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

import onnxshrink

SHAPE_READERS = ("Shape", "Size")


def shape_only_constants(model: onnx.ModelProto, min_size: int) -> list[dict]:
    """Replace every float constant (rank ≥ 1, ≥ ``min_size`` elements) read only by Shape/Size."""
    if onnxshrink.model_opset(model) < 9:  # ConstantOfShape
        return []
    found = onnxshrink.weight_tensors(model, {op: (0,) for op in SHAPE_READERS})
    taken = onnxshrink.all_names(model)
    outputs = {o.name for o in model.graph.output}
    done = []
    for weight in found:
        if weight.other_uses or weight.source == "overridable" or weight.name in outputs:
            continue
        if not weight.shape or weight.size < max(min_size, 1):
            continue
        if any(u.node.domain not in ("", "ai.onnx") for u in weight.weight_uses):
            continue
        dims = numpy_helper.from_array(
            np.array(weight.shape, np.int64), onnxshrink.unique_name(taken, f"{weight.name}_dims")
        )
        zero = numpy_helper.from_array(np.zeros(1, onnx.helper.tensor_dtype_to_np_dtype(weight.dtype)), "value")
        node = helper.make_node(
            "ConstantOfShape",
            [dims.name],
            [weight.name],
            name=onnxshrink.unique_name(taken, f"{weight.name}_shape_only"),
            value=zero,
        )
        before = weight.nbytes
        onnxshrink.replace_weight(model, weight, [node], [dims])
        done.append(
            {
                "tensor": weight.name,
                "shape": list(weight.shape),
                "readers": sorted({u.node.op_type for u in weight.weight_uses}),
                "bytes_before": int(before),
                "bytes_after": int(dims.ByteSize()),
                "form": "constant_of_shape",
            }
        )
    return done
