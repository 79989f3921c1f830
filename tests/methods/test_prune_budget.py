"""weight_prune's default: prune to a fidelity budget judged on held-back feeds, per-tensor sensitivity,
bitmask storage that shrinks the file, honest stats; checked with real onnxruntime sessions."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxshrink import weight_tensors
from onnxshrink.errors import UsageError
from onnxshrink.plugin.method import PluginSpec
from onnxshrink.run.pipeline import prepare_steps, run_steps
from onnxshrink.testing import reference_graphs as rg
from onnxshrink_plugins.prune.auto import split_feeds
from onnxshrink_plugins.prune.probe import logits_of_outputs, worst_cosine
from tests.support.files import MODELS


def digits(name: str) -> tuple[onnx.ModelProto, list[dict[str, np.ndarray]]]:
    """A digits model and its calibration samples as feeds of 8."""
    data = np.load(MODELS / f"{name}_calib.npz")
    inputs = [k for k in data.files if k != "labels"]
    count = len(data[inputs[0]])
    feeds = [{k: data[k][i : i + 8] for k in inputs} for i in range(0, count, 8)]
    return onnx.load(MODELS / f"{name}.onnx"), feeds


def prune(registry, model, feeds=None, **options):
    steps = prepare_steps([PluginSpec("weight_prune", {k: str(v) for k, v in options.items()})], registry)
    calibration = (lambda: feeds) if feeds is not None else None
    [result] = run_steps(model, steps, seed=0, calibration=calibration, calibration_is_synthetic=feeds is None)
    return result


def outputs(model: onnx.ModelProto, feeds) -> list[list[np.ndarray]]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return [session.run(None, feed) for feed in feeds]


def test_default_prunes_to_the_budget_and_shrinks_the_file(registry):
    model, feeds = digits("mlp")
    original = onnx.load(MODELS / "mlp.onnx")
    stats = prune(registry, model, feeds).stats
    assert stats["mode"] == "budget" and stats["budget"] == 0.99
    assert stats["sparsity"] > 0.3 and stats["stored_sparse"] == stats["pruned_tensors"] > 0
    assert stats["bytes_saved"] > 0 and stats["stopped"]
    # The file shrinks, and the held-back judging feeds really keep the worst per-feed cosine >= 0.99.
    assert model.ByteSize() < 0.75 * original.ByteSize()
    _, judge = split_feeds(feeds)
    measured = worst_cosine(outputs(original, judge), outputs(model, judge))
    assert measured >= 0.99
    assert measured == pytest.approx(stats["worst_cosine"], abs=1e-5)


def test_tighter_budget_prunes_less(registry):
    loose = prune(registry, digits("mlp")[0], digits("mlp")[1], budget=0.9).stats
    tight = prune(registry, digits("mlp")[0], digits("mlp")[1], budget=0.999).stats
    assert loose["sparsity"] > tight["sparsity"]
    assert loose["worst_cosine"] >= 0.9 and tight["worst_cosine"] >= 0.999


def test_budget_of_one_leaves_the_model_alone(registry):
    model, feeds = digits("mlp")
    before = model.SerializeToString()
    stats = prune(registry, model, feeds, budget=1.0).stats
    assert stats["pruned_tensors"] == 0 and stats["sparsity"] == 0.0 and stats["bytes_saved"] == 0
    assert "< 1.0" in stats["stopped"]
    assert np.array_equal(outputs(model, feeds[:2])[0][0], outputs(onnx.load_from_string(before), feeds[:2])[0][0])


def two_branches(quiet: float = 1e-3) -> onnx.ModelProto:
    """out = x @ A + quiet * (x @ B): B barely matters, A does."""
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((64, 64)).astype(np.float32) for _ in range(2))
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "A"], ["ya"]),
            helper.make_node("MatMul", ["x", "B"], ["yb"]),
            helper.make_node("Mul", ["yb", "quiet"], ["yq"]),
            helper.make_node("Add", ["ya", "yq"], ["out"]),
        ],
        "two_branches",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 64])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["n", 64])],
        [
            numpy_helper.from_array(a, "A"),
            numpy_helper.from_array(b, "B"),
            numpy_helper.from_array(np.float32(quiet), "quiet"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_sparsity_is_allocated_per_tensor_by_measured_sensitivity(registry):
    rng = np.random.default_rng(1)
    feeds = [{"x": rng.standard_normal((4, 64)).astype(np.float32)} for _ in range(8)]
    stats = prune(registry, two_branches(), feeds).stats
    reached = {t["name"]: t["sparsity_after"] for t in stats["tensors"]}
    assert reached["B"] == pytest.approx(0.95, abs=1e-3)  # the quiet branch goes as far as the levels allow
    assert reached["A"] < 0.5  # the loud one barely: a global fraction would have cut both alike
    assert stats["tensors"][1]["drop_at"]["0.9"] < stats["tensors"][0]["drop_at"]["0.5"]


def test_sensitivity_and_budget_use_different_feeds():
    feeds = [{"x": np.full((1, 1), i, np.float32)} for i in range(40)]
    rank, judge = split_feeds(feeds)
    assert [int(f["x"][0, 0]) for f in rank] == [0, 1]
    assert [int(f["x"][0, 0]) for f in judge] == list(range(2, 26))
    assert split_feeds(feeds[:1]) == (feeds[:1], feeds[:1])


def test_worst_cosine_is_the_worst_feed_not_the_mean():
    same = [np.array([1.0, 2.0, 3.0], np.float32)]
    flipped = [np.array([-1.0, -2.0, -3.0], np.float32)]
    reference = [same, same, same, same]
    candidate = [same, same, same, flipped]
    assert worst_cosine(reference, candidate) == pytest.approx(-1.0)
    assert worst_cosine([same], [[np.array([np.nan, 0, 0], np.float32)]]) == 0.0


def test_logits_before_a_final_softmax_are_judged_too():
    graph = helper.make_graph(
        [helper.make_node("Softmax", ["x"], ["p"]), helper.make_node("Reshape", ["p", "shape"], ["out"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [2])],
        [numpy_helper.from_array(np.array([2], np.int64), "shape")],
    )
    assert logits_of_outputs(graph) == ["x"]


def test_store_sparse_matches_dense_zeros_bit_for_bit(registry):
    model, feeds = digits("cnn")
    dense, sparse = onnx.ModelProto(), onnx.ModelProto()
    dense.CopyFrom(model)
    sparse.CopyFrom(model)
    prune(registry, dense, sparsity=0.8)
    stats = prune(registry, sparse, sparsity=0.8, store="sparse").stats
    assert stats["storage"]["stored_sparse"] == stats["pruned_tensors"] > 0
    assert sparse.ByteSize() < 0.5 * dense.ByteSize()
    for a, b in zip(outputs(dense, feeds[:3]), outputs(sparse, feeds[:3])):
        np.testing.assert_array_equal(a[0], b[0])


def test_store_auto_keeps_a_tensor_dense_when_the_bitmask_is_larger(registry):
    model = rg.mlp()
    stats = prune(registry, model, sparsity=0.01, min_size=0, store="auto").stats
    assert stats["storage"]["stored_sparse"] == 0
    assert all(">=" in t["reason"] for t in stats["storage"]["dense_tensors"])


def test_store_dense_with_the_budget_keeps_the_zeros_in_place(registry):
    model, feeds = digits("mlp")
    stats = prune(registry, model, feeds, store="dense").stats
    assert stats["stored_sparse"] == 0 and stats["sparsity"] > 0.3
    zeros = sum(int(np.sum(w.array() == 0)) for w in weight_tensors(model))
    assert zeros == stats["zeros"]


def test_without_data_it_warns_about_synthetic_inputs(registry):
    result = prune(registry, rg.mlp())
    assert any("synthetic" in w for w in result.warnings)
    assert result.stats["judging_feeds"] >= 1


def test_same_seed_same_bytes(registry):
    a, feeds = digits("cnn")
    b = onnx.load(MODELS / "cnn.onnx")
    prune(registry, a, feeds)
    prune(registry, b, feeds)
    assert a.SerializeToString(deterministic=True) == b.SerializeToString(deterministic=True)


def test_opset_10_is_upgraded_so_the_bitmask_can_be_stored(registry):
    model = rg.mlp()
    model.opset_import[0].version = 10
    stats = prune(registry, model, min_size=0, budget=0.9).stats
    assert stats["opset_upgraded"] == "10 -> 11" and stats["stored_sparse"] > 0
    onnx.checker.check_model(model, full_check=True)


@pytest.mark.parametrize(
    ("builder", "reason"),
    [
        (rg.initializer_as_input, "graph input"),
        (rg.if_subgraph, "inside a subgraph"),
        (rg.constant_node_weights, None),
        (rg.fp16_mlp, None),
        (rg.shared_weight, None),
    ],
)
def test_awkward_weight_locations(registry, builder, reason):
    model = builder()
    stats = prune(registry, model, min_size=0, budget=0.9).stats
    onnx.checker.check_model(model, full_check=True)
    if reason:
        assert any(reason in s["reason"] for s in stats["skipped"])
    else:  # tensors this small (under ~1k elements) gain nothing from a bitmask: they are left whole
        assert stats["stored_sparse"] == stats["pruned_tensors"]
        assert all("smaller" in s["reason"] for s in stats["skipped"] if s["reason"] != "1-D tensor (bias-like)")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"budget": "0.9", "sparsity": "0.5"}, "budget decides how far to prune"),
        ({"budget": "0.9", "pattern": "2:4"}, "cannot be combined with pattern"),
        ({"store": "sparse", "structured": "channel"}, "store applies to zeroed weights"),
        ({"scope": "global"}, "scope needs sparsity"),
        ({"store": "packed"}, "'store'"),
        ({"budget": "1.5"}, "'budget'"),
    ],
)
def test_option_errors(registry, options, message):
    with pytest.raises(UsageError, match=message):
        prepare_steps([PluginSpec("weight_prune", options)], registry)


def test_plugins_listing_shows_budget_and_store(cli):
    result = cli("plugins", "--json")
    prune_method = {m["name"]: m for m in json.loads(result.stdout)["methods"]}["weight_prune"]
    options = {o["name"]: o for o in prune_method["options"]}
    assert options["budget"]["default"] == 0.99 and options["store"]["choices"] == ["auto", "dense", "sparse"]
    assert options["sparsity"]["default"] is None


def test_weights_left_on_disk_ask_for_a_fixed_sparsity(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("ONNXSHRINK_LAZY_BYTES", "1")  # edit with the weights left in external data
    model = rg.mlp()
    onnx.save(
        model,
        tmp_path / "m.onnx",
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="m.data",
        size_threshold=0,
    )
    result = cli(tmp_path / "m.onnx", "--plugin", "weight_prune", "-o", tmp_path / "out.onnx", "--no-validate")
    assert result.exit_code == 2 and "external data" in result.stderr and "sparsity=" in result.stderr
    assert not (tmp_path / "out.onnx").exists()
    assert (
        cli(
            tmp_path / "m.onnx", "--plugin", "weight_prune:sparsity=0.5", "-o", tmp_path / "out.onnx", "--no-validate"
        ).exit_code
        == 0
    )


def test_opset_10_is_left_alone_when_nothing_gets_pruned(registry):
    model = rg.mlp()
    model.opset_import[0].version = 10
    before = model.SerializeToString(deterministic=True)
    stats = prune(registry, model, min_size=0, budget=1.0).stats
    assert stats["pruned_tensors"] == 0 and "undone" in stats["opset_upgraded"]
    assert model.SerializeToString(deterministic=True) == before
