"""Small models built in code (classifiers, two-input graphs, a Constant and an If, an opset-10 MatMul)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = [helper.make_opsetid("", 17)]


def classifier(
    batch: int | str = "N",
    in_dim: int = 4,
    classes: int = 3,
    *,
    seed: int = 0,
    perturb: float = 0.0,
    with_pred: bool = False,
) -> onnx.ModelProto:
    """x[batch, in_dim] → MatMul → Add → ``logits`` [batch, classes] (+ ArgMax ``pred`` int64)."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((in_dim, classes)).astype(np.float32)
    b = rng.standard_normal(classes).astype(np.float32)
    if perturb:
        w = w + perturb * np.random.default_rng(seed + 1).standard_normal(w.shape).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Add", ["h", "B"], ["logits"])]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, classes])]
    if with_pred:
        nodes.append(helper.make_node("ArgMax", ["logits"], ["pred"], axis=1, keepdims=0))
        outputs.append(helper.make_tensor_value_info("pred", TensorProto.INT64, [batch]))
    graph = helper.make_graph(
        nodes,
        "classifier",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, in_dim])],
        outputs,
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")],
    )
    return helper.make_model(graph, opset_imports=OPSET)


def two_inputs(batch: int | str = "N") -> onnx.ModelProto:
    """ids int64 [batch, 5], mask bool [batch, 5], and scale (initializer that is also a graph input)."""
    nodes = [
        helper.make_node("Cast", ["ids"], ["idsf"], to=TensorProto.FLOAT),
        helper.make_node("Cast", ["mask"], ["maskf"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["idsf", "maskf"], ["m"]),
        helper.make_node("Mul", ["m", "scale"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "two_inputs",
        [
            helper.make_tensor_value_info("ids", TensorProto.INT64, [batch, 5]),
            helper.make_tensor_value_info("mask", TensorProto.BOOL, [batch, 5]),
            helper.make_tensor_value_info("scale", TensorProto.FLOAT, []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 5])],
        [numpy_helper.from_array(np.array(2.0, np.float32), "scale")],
    )
    return helper.make_model(graph, opset_imports=OPSET)


def with_constant_and_if() -> onnx.ModelProto:
    """Weights in a Constant node (2x3 with one zero) and inside both branches of an If (3 elements each)."""
    c = numpy_helper.from_array(np.array([[1, 0, 2], [3, 4, 5]], np.float32), "c")
    then_c = numpy_helper.from_array(np.array([1, 2, 0], np.float32), "tc")
    else_c = numpy_helper.from_array(np.array([0, 0, 7], np.float32), "ec")
    then_g = helper.make_graph(
        [helper.make_node("Constant", [], ["t"], value=then_c)],
        "then",
        [],
        [helper.make_tensor_value_info("t", TensorProto.FLOAT, [3])],
    )
    else_g = helper.make_graph(
        [helper.make_node("Constant", [], ["e"], value=else_c)],
        "else",
        [],
        [helper.make_tensor_value_info("e", TensorProto.FLOAT, [3])],
    )
    nodes = [
        helper.make_node("Constant", [], ["C"], value=c),
        helper.make_node("MatMul", ["x", "C"], ["h"]),
        helper.make_node("If", ["cond"], ["v"], then_branch=then_g, else_branch=else_g),
        helper.make_node("Add", ["h", "v"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "const_if",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
        [
            numpy_helper.from_array(np.array(True), "cond"),
            numpy_helper.from_array(np.array([0, 1.5], np.float32), "unused"),
        ],
    )
    return helper.make_model(graph, opset_imports=OPSET)


def opset10_matmul(folder: Path) -> tuple[Path, Path]:
    """An opset-10 model with one 64x32 MatMul weight and 64 feeds of data for it: (model, data)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((64, 32)).astype(np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 32])],
        [w],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 10)]), folder / "m10.onnx")
    np.savez(folder / "x.npz", x=rng.standard_normal((64, 64)).astype(np.float32))
    return folder / "m10.onnx", folder / "x.npz"
