"""Graph helpers find weights wherever exporters put them, and replace them without breaking readers."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from onnxshrink import consumers, op_histogram, replace_weight, weight_tensors
from onnxshrink.testing import reference_graphs as rg
from onnxshrink.toolkit.runtime import run_model
from onnxshrink.toolkit.tidy import tidy_model


def feeds(model: onnx.ModelProto, n: int = 3) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(1)
    inp = model.graph.input[0]
    dtype = onnx.helper.tensor_dtype_to_np_dtype(inp.type.tensor_type.elem_type)
    shape = [d.dim_value or 2 for d in inp.type.tensor_type.shape.dim]
    return [{inp.name: rng.standard_normal(shape).astype(dtype)} for _ in range(n)]


def by_name(model):
    return {w.name: w for w in weight_tensors(model)}


def test_initializers_and_biases():
    weights = by_name(rg.mlp())
    assert set(weights) == {"fc1.weight", "fc2.weight"}  # biases feed Gemm C / Add, not weight slots
    assert weights["fc1.weight"].op_types == ["Gemm"] and weights["fc1.weight"].source == "initializer"


def test_shared_weight_appears_once_with_all_uses():
    [w] = weight_tensors(rg.shared_weight())
    assert w.name == "W" and len(w.weight_uses) == 2


def test_constant_node_weights():
    weights = by_name(rg.constant_node_weights())
    assert {w.source for w in weights.values()} == {"constant"}
    assert weights["W1"].shape == (16, 24)


def test_subgraph_weights_outer_and_inner():
    weights = by_name(rg.if_subgraph())
    assert set(weights) == {"W_in", "W_outer", "W_inner"}
    assert not weights["W_outer"].in_subgraph  # defined outside, read inside the branch
    assert weights["W_outer"].weight_uses[0].graph.name == "then_branch"
    assert weights["W_inner"].in_subgraph


def test_overridable_initializer():
    [w] = weight_tensors(rg.initializer_as_input())
    assert w.source == "overridable"


def test_set_array_changes_every_reader():
    model = rg.shared_weight()
    [w] = weight_tensors(model)
    w.set_array(np.zeros(w.shape, np.float32))
    out = run_model(model, feeds(model))
    assert all(np.all(o["output"] == 0) for o in out)


@pytest.mark.parametrize("builder", [rg.mlp, rg.constant_node_weights, rg.if_subgraph, rg.shared_weight])
def test_replace_weight_with_a_folding_chain_keeps_outputs(builder):
    """int8 values + Cast + Mul(scale) in place of each weight: outputs match the dequantized weights."""
    model = builder()
    expected_model = builder()
    for w, w_ref in zip(weight_tensors(model), weight_tensors(expected_model)):
        values = w.array()
        scale = np.float32(np.abs(values).max() / 127)
        q = np.round(values / scale).astype(np.int8)
        w_ref.set_array(q.astype(np.float32) * scale)
        nodes = [
            helper.make_node("Cast", [f"{w.name}_q"], [f"{w.name}_f"], to=onnx.TensorProto.FLOAT),
            helper.make_node("Mul", [f"{w.name}_f", f"{w.name}_scale"], [w.name]),
        ]
        inits = [numpy_helper.from_array(q, f"{w.name}_q"), numpy_helper.from_array(np.array(scale), f"{w.name}_scale")]
        replace_weight(model, w, nodes, inits)
    tidy_model(model)
    onnx.checker.check_model(model, full_check=True)
    data = feeds(model)
    for got, want in zip(run_model(model, data), run_model(expected_model, data)):
        for name in want:
            np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6)


def test_replace_weight_for_some_uses_only():
    model = rg.shared_weight()
    [w] = weight_tensors(model)
    first = [u for u in w.weight_uses if u.node.name == "mm1"]
    nodes = [helper.make_node("Mul", ["W", "two"], ["W"])]
    new_name = replace_weight(model, w, nodes, [numpy_helper.from_array(np.array(2.0, np.float32), "two")], uses=first)
    assert new_name != "W"
    assert [u.node.name for u in consumers(model, new_name)] == ["mm1"]
    readers_of_w = [u.node.op_type if not u.node.name else u.node.name for u in consumers(model, "W")]
    assert "mm2" in readers_of_w and "mm1" not in readers_of_w  # the new Mul reads W; mm2 still does
    tidy_model(model)
    onnx.checker.check_model(model, full_check=True)


def test_tidy_removes_dead_nodes_and_sorts():
    model = rg.mlp()
    dead = helper.make_node("Relu", ["h"], ["unused"], name="dead")
    model.graph.node.insert(0, dead)  # dead and out of order
    model.graph.initializer.append(numpy_helper.from_array(np.zeros(3, np.float32), "orphan"))
    tidy_model(model)
    assert "dead" not in [n.name for n in model.graph.node]
    assert "orphan" not in [t.name for t in model.graph.initializer]
    onnx.checker.check_model(model, full_check=True)


def test_tidy_keeps_subgraph_weights_in_place():
    model = rg.if_subgraph()
    before = model.SerializeToString()
    tidy_model(model)
    assert model.SerializeToString() == before


def test_op_histogram_counts_subgraphs():
    hist = op_histogram(rg.if_subgraph())
    assert hist["MatMul"] == 3 and hist["If"] == 1
