"""Small reference models built in code, covering what real exported models do to optimizers.

Each builder returns a valid ``onnx.ModelProto`` (checked with strict shape inference) whose weights
come from a fixed seed. Used by onnxshrink's tests and by the conformance kit for plugin authors.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _w(rng: np.random.Generator, *shape: int, scale: float = 0.2) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def _model(nodes, inputs, outputs, initializers=(), opset: int = OPSET, name: str = "g") -> onnx.ModelProto:
    graph = helper.make_graph(nodes, name, inputs, outputs, list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="onnxshrink-tests")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def mlp(batch: int | str = "batch", seed: int = 0) -> onnx.ModelProto:
    """Gemm → Relu → MatMul + Add → logits (16 → 32 → 10)."""
    rng = _rng(seed)
    inits = [
        numpy_helper.from_array(_w(rng, 32, 16), "fc1.weight"),
        numpy_helper.from_array(_w(rng, 32), "fc1.bias"),
        numpy_helper.from_array(_w(rng, 32, 10), "fc2.weight"),
        numpy_helper.from_array(_w(rng, 10), "fc2.bias"),
    ]
    nodes = [
        helper.make_node("Gemm", ["input", "fc1.weight", "fc1.bias"], ["h"], name="fc1", transB=1),
        helper.make_node("Relu", ["h"], ["a"], name="relu1"),
        helper.make_node("MatMul", ["a", "fc2.weight"], ["m"], name="fc2"),
        helper.make_node("Add", ["m", "fc2.bias"], ["logits"], name="fc2_bias"),
    ]
    return _model(
        nodes,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 10])],
        inits,
    )


def conv_bn_residual(batch: int | str = "batch", seed: int = 0, channels: int = 8) -> onnx.ModelProto:
    """Conv → BN → Relu → Conv → BN → Add(residual) → Relu → GlobalAveragePool → Flatten → Gemm."""
    rng = _rng(seed)
    c = channels
    inits = [numpy_helper.from_array(_w(rng, c, 1, 3, 3), "stem.weight")]
    nodes = [helper.make_node("Conv", ["input", "stem.weight"], ["s"], name="stem", pads=[1, 1, 1, 1])]

    def bn(prefix: str, x: str, y: str) -> None:
        inits.extend(
            [
                numpy_helper.from_array((1 + 0.1 * rng.standard_normal(c)).astype(np.float32), f"{prefix}.scale"),
                numpy_helper.from_array((0.1 * rng.standard_normal(c)).astype(np.float32), f"{prefix}.bias"),
                numpy_helper.from_array((0.1 * rng.standard_normal(c)).astype(np.float32), f"{prefix}.mean"),
                numpy_helper.from_array((1 + 0.1 * rng.random(c)).astype(np.float32), f"{prefix}.var"),
            ]
        )
        nodes.append(helper.make_node("BatchNormalization", [x, f"{prefix}.scale", f"{prefix}.bias", f"{prefix}.mean", f"{prefix}.var"], [y], name=prefix))

    bn("stem_bn", "s", "s_bn")
    nodes.append(helper.make_node("Relu", ["s_bn"], ["x0"], name="stem_relu"))
    inits.append(numpy_helper.from_array(_w(rng, c, c, 3, 3), "block.conv1.weight"))
    nodes.append(helper.make_node("Conv", ["x0", "block.conv1.weight"], ["b1"], name="block.conv1", pads=[1, 1, 1, 1]))
    bn("block.bn1", "b1", "b1_bn")
    nodes.append(helper.make_node("Relu", ["b1_bn"], ["b1_r"], name="block.relu1"))
    inits.append(numpy_helper.from_array(_w(rng, c, c, 3, 3), "block.conv2.weight"))
    nodes.append(helper.make_node("Conv", ["b1_r", "block.conv2.weight"], ["b2"], name="block.conv2", pads=[1, 1, 1, 1]))
    bn("block.bn2", "b2", "b2_bn")
    nodes += [
        helper.make_node("Add", ["b2_bn", "x0"], ["res"], name="block.add"),
        helper.make_node("Relu", ["res"], ["x1"], name="block.relu2"),
        helper.make_node("GlobalAveragePool", ["x1"], ["pooled"], name="pool"),
        helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten"),
    ]
    inits += [numpy_helper.from_array(_w(rng, 10, c), "fc.weight"), numpy_helper.from_array(_w(rng, 10), "fc.bias")]
    nodes.append(helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["logits"], name="fc", transB=1))
    return _model(
        nodes,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 10])],
        inits,
    )


def shared_weight(seed: int = 0) -> onnx.ModelProto:
    """One weight read by two MatMuls (tied weights)."""
    rng = _rng(seed)
    nodes = [
        helper.make_node("MatMul", ["input", "W"], ["h"], name="mm1"),
        helper.make_node("Relu", ["h"], ["a"], name="relu"),
        helper.make_node("MatMul", ["a", "W"], ["output"], name="mm2"),
    ]
    return _model(
        nodes,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 16])],
        [numpy_helper.from_array(_w(rng, 16, 16), "W")],
    )


def constant_node_weights(seed: int = 0) -> onnx.ModelProto:
    """Weights held in Constant nodes (as PaddlePaddle and some tracers export them)."""
    rng = _rng(seed)
    nodes = [
        helper.make_node("Constant", [], ["W1"], name="const_w1", value=numpy_helper.from_array(_w(rng, 16, 24), "W1")),
        helper.make_node("Constant", [], ["W2"], name="const_w2", value=numpy_helper.from_array(_w(rng, 24, 8), "W2")),
        helper.make_node("MatMul", ["input", "W1"], ["h"], name="mm1"),
        helper.make_node("Relu", ["h"], ["a"], name="relu"),
        helper.make_node("MatMul", ["a", "W2"], ["output"], name="mm2"),
    ]
    return _model(
        nodes,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 8])],
    )


def if_subgraph(seed: int = 0) -> onnx.ModelProto:
    """An If whose branches read weights: one from the outer scope, one stored inside the branch."""
    rng = _rng(seed)
    then_graph = helper.make_graph(
        [helper.make_node("MatMul", ["h", "W_outer"], ["t"], name="then_mm")],
        "then_branch",
        [],
        [helper.make_tensor_value_info("t", TensorProto.FLOAT, ["batch", 16])],
    )
    else_graph = helper.make_graph(
        [helper.make_node("MatMul", ["h", "W_inner"], ["e"], name="else_mm")],
        "else_branch",
        [],
        [helper.make_tensor_value_info("e", TensorProto.FLOAT, ["batch", 16])],
        [numpy_helper.from_array(_w(rng, 16, 16), "W_inner")],
    )
    nodes = [
        helper.make_node("MatMul", ["input", "W_in"], ["h"], name="mm_in"),
        helper.make_node("ReduceSum", ["input"], ["total"], name="sum", keepdims=0),
        helper.make_node("Greater", ["total", "zero"], ["cond"], name="cond"),
        helper.make_node("If", ["cond"], ["output"], name="branch", then_branch=then_graph, else_branch=else_graph),
    ]
    return _model(
        nodes,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 16])],
        [
            numpy_helper.from_array(_w(rng, 16, 16), "W_in"),
            numpy_helper.from_array(_w(rng, 16, 16), "W_outer"),
            numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero"),
        ],
    )


def initializer_as_input(seed: int = 0) -> onnx.ModelProto:
    """An initializer that is also a graph input (IR < 4 exporters do this for every weight)."""
    rng = _rng(seed)
    nodes = [helper.make_node("MatMul", ["input", "W"], ["output"], name="mm")]
    return _model(
        nodes,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 16]), helper.make_tensor_value_info("W", TensorProto.FLOAT, [16, 16])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 16])],
        [numpy_helper.from_array(_w(rng, 16, 16), "W")],
    )


def fp16_mlp(seed: int = 0) -> onnx.ModelProto:
    """An MLP stored in float16 end to end."""
    rng = _rng(seed)
    nodes = [
        helper.make_node("MatMul", ["input", "W1"], ["h"], name="mm1"),
        helper.make_node("Relu", ["h"], ["a"], name="relu"),
        helper.make_node("MatMul", ["a", "W2"], ["output"], name="mm2"),
    ]
    return _model(
        nodes,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT16, ["batch", 16])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT16, ["batch", 8])],
        [numpy_helper.from_array(_w(rng, 16, 32).astype(np.float16), "W1"), numpy_helper.from_array(_w(rng, 32, 8).astype(np.float16), "W2")],
    )


REFERENCE_GRAPHS: dict[str, Callable[[], onnx.ModelProto]] = {
    "mlp": mlp,
    "conv_bn_residual": conv_bn_residual,
    "shared_weight": shared_weight,
    "constant_node_weights": constant_node_weights,
    "if_subgraph": if_subgraph,
    "initializer_as_input": initializer_as_input,
    "fp16_mlp": fp16_mlp,
}
