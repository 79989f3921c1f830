"""``onnxshrink inspect``: what a model file holds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx

from onnxshrink.ir.io import load_model
from onnxshrink.ir.walk import op_histogram
from onnxshrink.validate.size import measure_size


def _dims(value_info: onnx.ValueInfoProto) -> list[int | str | None]:
    tensor = value_info.type.tensor_type
    if not tensor.HasField("shape"):
        return []
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor.shape.dim]


def _io(value_info: onnx.ValueInfoProto) -> dict[str, Any]:
    elem = value_info.type.tensor_type.elem_type
    return {
        "name": value_info.name,
        "dtype": onnx.TensorProto.DataType.Name(elem).lower() if elem else "unknown",
        "shape": _dims(value_info),
    }


def inspect_model(path: str | Path) -> dict[str, Any]:
    """Sizes, parameter and non-zero counts, op histogram, inputs/outputs and opsets of a model."""
    loaded = load_model(path)
    model = loaded.model
    initializers = {t.name for t in model.graph.initializer}
    return {
        "path": str(path),
        "size": measure_size(path),
        "external_data_files": [str(p) for p in loaded.external_files],
        "ir_version": model.ir_version,
        "opsets": {(o.domain or "ai.onnx"): o.version for o in model.opset_import},
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "inputs": [_io(i) for i in model.graph.input if i.name not in initializers],
        "outputs": [_io(o) for o in model.graph.output],
        "nodes": sum(op_histogram(model).values()),
        "ops": op_histogram(model),
    }
