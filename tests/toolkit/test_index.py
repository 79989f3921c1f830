"""GraphIndex answers producer, position and reader questions from one pass over the graph."""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

import onnxshrink


def _graph() -> onnx.GraphProto:
    then = helper.make_graph(
        [helper.make_node("Identity", ["a"], ["t"])],
        "then",
        [],
        [helper.make_tensor_value_info("t", TensorProto.FLOAT, [1])],
    )
    other = helper.make_graph(
        [helper.make_node("Identity", ["b"], ["e"])],
        "else",
        [],
        [helper.make_tensor_value_info("e", TensorProto.FLOAT, [1])],
    )
    nodes = [
        helper.make_node("Relu", ["x"], ["a"], name="relu"),
        helper.make_node("Mul", ["a", "a"], ["b"], name="square"),
        helper.make_node("If", ["c"], ["y"], name="branch", then_branch=then, else_branch=other),
    ]
    inputs = [
        helper.make_tensor_value_info(n, TensorProto.FLOAT if n == "x" else TensorProto.BOOL, [1]) for n in ("x", "c")
    ]
    return helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])


def test_producers_positions_and_readers_include_subgraph_reads():
    graph = _graph()
    index = onnxshrink.GraphIndex(graph)
    assert index.producer("b").name == "square" and index.position("b") == 1
    assert index.producer("x") is None and index.position("x") is None
    assert [n.name for n in index.readers("a")] == ["square", "branch"]  # the If reads a in its then-branch
    assert [n.name for n in index.readers("b")] == ["branch"]
    assert index.readers("y") == []
    assert index.producer("a") is onnxshrink.producer(graph, "a")
