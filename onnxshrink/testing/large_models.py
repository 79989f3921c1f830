"""Large models made on the fly (never committed): a transformer-like stack of MatMul layers whose
weights live in one external-data file, written tensor by tensor so making one needs little memory."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper


def _external(name: str, shape: tuple[int, ...], location: str, offset: int) -> onnx.TensorProto:
    tensor = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=list(shape))
    tensor.data_location = TensorProto.EXTERNAL
    length = int(np.prod(shape)) * 4
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        tensor.external_data.add(key=key, value=value)
    return tensor


def make_mlp_stack(path: str | os.PathLike, target_bytes: int, *, width: int = 1024, seed: int = 0) -> Path:
    """Write ``path`` (+ ``<name>.data``): residual blocks ``x + W2·relu(W1·x)`` until the weights reach
    ``target_bytes``. Values are a repeated random block (cheap to make, not all-zero, prunable)."""
    path = Path(path)
    data_name = path.name + ".data"
    hidden = 4 * width
    layer_bytes = 2 * width * hidden * 4
    layers = max(1, -(-target_bytes // layer_bytes))
    rng = np.random.default_rng(seed)
    block = (rng.standard_normal(width * hidden, dtype=np.float32) * 0.02).astype(np.float32)
    nodes, inits, offset, x = [], [], 0, "input"
    with open(path.parent / data_name, "wb") as data:
        for i in range(layers):
            for name, shape in ((f"layer{i}.up.weight", (width, hidden)), (f"layer{i}.down.weight", (hidden, width))):
                values = np.roll(block, i * 7919 + len(name)).reshape(shape)
                data.write(values.tobytes())
                inits.append(_external(name, shape, data_name, offset))
                offset += values.nbytes
            nodes += [
                helper.make_node("MatMul", [x, f"layer{i}.up.weight"], [f"h{i}"], name=f"layer{i}.up"),
                helper.make_node("Relu", [f"h{i}"], [f"a{i}"], name=f"layer{i}.relu"),
                helper.make_node("MatMul", [f"a{i}", f"layer{i}.down.weight"], [f"d{i}"], name=f"layer{i}.down"),
                helper.make_node("Add", [x, f"d{i}"], [f"x{i}"], name=f"layer{i}.residual"),
            ]
            x = f"x{i}"
    nodes.append(helper.make_node("Identity", [x], ["output"], name="output"))
    graph = helper.make_graph(
        nodes,
        "mlp_stack",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", width])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="onnxshrink-large")
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())
    return path
