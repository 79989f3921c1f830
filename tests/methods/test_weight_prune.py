"""weight_prune: exact sparsity per tensor or global, thresholds, awkward weight locations, determinism."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from onnxshrink import weight_tensors
from onnxshrink.errors import UsageError
from onnxshrink.plugin.method import PluginSpec
from onnxshrink.run.pipeline import prepare_steps, run_steps
from onnxshrink.testing import reference_graphs as rg


def prune(registry, model, **options):
    steps = prepare_steps([PluginSpec("weight_prune", {k: str(v) for k, v in options.items()})], registry)
    [result] = run_steps(model, steps, seed=0)
    return result.stats


def sparsities(model):
    return {w.name: float(np.mean(w.array() == 0)) for w in weight_tensors(model)}


def test_layer_scope_hits_the_target_in_every_tensor(registry):
    model = rg.conv_bn_residual(channels=16)
    stats = prune(registry, model, sparsity=0.6, min_size=0)
    for name, s in sparsities(model).items():
        assert s == pytest.approx(0.6, abs=0.01), name
    assert stats["pruned_tensors"] == 4 and stats["sparsity"] == pytest.approx(0.6, abs=0.01)


def test_global_scope_ranks_all_tensors_together(registry):
    model = rg.mlp()
    original = {w.name: w.array() for w in weight_tensors(model)}
    stats = prune(registry, model, sparsity=0.5, scope="global", min_size=0)
    everything = np.concatenate([np.abs(a).ravel() for a in original.values()])
    cut = np.sort(everything)[int(0.5 * everything.size) - 1]
    for w in weight_tensors(model):
        kept = w.array() != 0
        assert np.all(np.abs(original[w.name])[kept] >= cut)
    assert stats["sparsity"] == pytest.approx(0.5, abs=1e-3)


def test_threshold_zeroes_small_weights_only(registry):
    model = rg.mlp()
    original = {w.name: w.array() for w in weight_tensors(model)}
    prune(registry, model, threshold=0.1, min_size=0)
    for w in weight_tensors(model):
        np.testing.assert_array_equal(w.array(), np.where(np.abs(original[w.name]) < 0.1, 0, original[w.name]))


def test_biases_and_small_tensors_are_skipped(registry):
    model = rg.mlp()
    biases = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer if "bias" in t.name}
    stats = prune(registry, model, sparsity=0.9, min_size=400)
    assert [s["name"] for s in stats["skipped"]] == ["fc2.weight"]  # 320 elements < 400
    for t in model.graph.initializer:
        if t.name in biases:
            np.testing.assert_array_equal(onnx.numpy_helper.to_array(t), biases[t.name])


@pytest.mark.parametrize(
    "builder", [rg.shared_weight, rg.constant_node_weights, rg.if_subgraph, rg.fp16_mlp, rg.initializer_as_input]
)
def test_awkward_weight_locations(registry, builder):
    model = builder()
    stats = prune(registry, model, sparsity=0.5, min_size=0)
    assert stats["pruned_tensors"] == len(weight_tensors(builder()))
    for name, s in sparsities(model).items():
        assert s == pytest.approx(0.5, abs=0.01), name
    onnx.checker.check_model(model, full_check=True)


def test_embeddings_only_when_asked(registry):
    from onnx import TensorProto, helper, numpy_helper

    table = np.random.default_rng(0).standard_normal((50, 8)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["emb", "ids"], ["out"])],
        "g",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["n"])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["n", 8])],
        [numpy_helper.from_array(table, "emb")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    stats = prune(registry, model, sparsity=0.5, min_size=0)
    assert stats["pruned_tensors"] == 0
    stats = prune(registry, model, sparsity=0.5, min_size=0, embeddings="true")
    assert stats["pruned_tensors"] == 1


def test_sparsity_and_threshold_together_is_an_error(registry):
    with pytest.raises(UsageError, match="either sparsity or threshold"):
        prepare_steps([PluginSpec("weight_prune", {"sparsity": "0.5", "threshold": "0.1"})], registry)


def test_same_seed_same_bytes(registry):
    a, b = rg.conv_bn_residual(), rg.conv_bn_residual()
    prune(registry, a, sparsity=0.7, scope="global", min_size=0)
    prune(registry, b, sparsity=0.7, scope="global", min_size=0)
    assert a.SerializeToString(deterministic=True) == b.SerializeToString(deterministic=True)


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.77, 1.0])
def test_global_scope_matches_one_stable_sort_even_with_ties(registry, sparsity):
    """The streaming global cut prunes exactly what one stable sort over all weights would."""
    model = rg.mlp()
    rng = np.random.default_rng(3)
    for w in weight_tensors(model):  # few distinct values: many ties at any cut
        w.set_array(rng.integers(-4, 5, size=w.shape).astype(np.float32) / 4)
    original = [w.array() for w in weight_tensors(model)]
    flat = np.concatenate([np.abs(a).ravel() for a in original])
    expected = np.zeros(flat.size, bool)
    expected[np.argsort(flat, kind="stable")[: int(round(sparsity * flat.size))]] = True
    prune(registry, model, sparsity=sparsity, scope="global", min_size=0)
    got = np.concatenate([(w.array() == 0).ravel() for w in weight_tensors(model)])
    was_zero = np.concatenate([(a == 0).ravel() for a in original])
    np.testing.assert_array_equal(got, expected | was_zero)
