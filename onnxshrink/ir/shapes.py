"""What onnx's shape inference knows about the main graph's tensors: their shapes and element types."""

from __future__ import annotations

import onnx


def inferred_shapes(model: onnx.ModelProto) -> dict[str, tuple[int | str | None, ...]]:
    """Shapes onnx's shape inference finds for the main graph's tensors: an int per static dim, the
    dim_param's name for a symbolic one, None for an unknown one. Tensors of unknown rank are absent."""
    graph = _inferred(model).graph
    shapes: dict[str, tuple[int | str | None, ...]] = {}
    for info in [*graph.input, *graph.value_info, *graph.output]:
        tensor_type = info.type.tensor_type
        if not tensor_type.HasField("shape"):
            continue
        shapes[info.name] = tuple(
            d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor_type.shape.dim
        )
    for init in graph.initializer:
        shapes[init.name] = tuple(init.dims)
    return shapes


def inferred_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element types (``onnx.TensorProto`` type numbers) of the main graph's tensors, where known."""
    graph = _inferred(model).graph
    types = {info.name: info.type.tensor_type.elem_type for info in [*graph.input, *graph.value_info, *graph.output]}
    types.update({init.name: init.data_type for init in graph.initializer})
    return types


def _inferred(model: onnx.ModelProto) -> onnx.ModelProto:
    try:
        return onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception:  # noqa: BLE001 - custom ops and broken models: no inferred shapes, not an error
        return model
