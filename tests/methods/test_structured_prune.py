"""weight_prune structured=channel, pattern=N:M and reconstruct, on models/ and graphs built in code."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxshrink
from onnxshrink.plugin.method import PluginSpec
from onnxshrink.run.pipeline import prepare_steps, run_steps
from onnxshrink.testing import reference_graphs as rg
from onnxshrink.toolkit.runtime import run_model
from tests.support.files import MODELS


def load(name: str) -> onnx.ModelProto:
    return onnx.load(MODELS / f"{name}.onnx")


def data(name: str, split: str, count: int | None = None) -> list[dict[str, np.ndarray]]:
    return [{"input": np.load(MODELS / f"{name}_{split}.npz")["input"][:count]}]


def prune(registry, model, feeds=None, **options):
    steps = prepare_steps([PluginSpec("weight_prune", {k: str(v) for k, v in options.items()})], registry)
    [result] = run_steps(
        model, steps, seed=0, calibration=(lambda: feeds) if feeds is not None else None, calibration_is_synthetic=False
    )
    return result.stats


def relative_error(reference: onnx.ModelProto, candidate: onnx.ModelProto, feeds) -> float:
    a, b = run_model(reference, feeds)[0]["logits"], run_model(candidate, feeds)[0]["logits"]
    return float(np.sum((a - b) ** 2) / np.sum(a**2))


def test_channel_sparsity_per_group_on_the_cnn(registry):
    model = load("cnn")
    stats = prune(registry, model, structured="channel", sparsity=0.5)
    assert stats["mode"] == "channel" and stats["scope"] == "layer"
    assert [g["removed"] for g in stats["groups"]] == [g["channels"] // 2 for g in stats["groups"]]
    assert stats["channels_removed"] == 144 and stats["params_after"] < 0.3 * stats["params_before"]
    assert stats["declined"] == [
        {
            "id": "/fc/Gemm",
            "channels": 10,
            "sources": ["/fc/Gemm"],
            "sinks": [],
            "reasons": ["they reach graph output 'logits'"],
        }
    ]
    conv_widths = {
        n.name: next(t.dims[0] for t in model.graph.initializer if t.name == n.input[1])
        for n in model.graph.node
        if n.op_type == "Conv"
    }
    assert conv_widths["/stem/stem.0/Conv"] == 16 and conv_widths["/layer2/layer2.1/conv1/Conv"] == 32
    assert run_model(model, data("cnn", "eval", 4))[0]["logits"].shape == (4, 10)


def test_global_scope_ranks_all_groups_together(registry):
    model = load("mlp")
    stats = prune(registry, model, structured="channel", sparsity=0.5, scope="global", norm="l2")
    assert stats["channels_removed"] == 192 == sum(g["removed"] for g in stats["groups"])
    assert sorted(g["removed"] for g in stats["groups"]) != [64, 128]  # not the per-group split


def test_threshold_removes_the_channels_whose_norm_is_below_it(registry):
    model = load("mlp")
    analysis = onnxshrink.analyze_channels(model)
    norms = {g.id: onnxshrink.channel_importance(analysis, g, "l1") for g in analysis.prunable}
    threshold = float(np.median(np.concatenate(list(norms.values()))))
    stats = prune(registry, model, structured="channel", threshold=threshold)
    assert {g["id"]: g["removed"] for g in stats["groups"]} == {
        gid: int(np.sum(n < threshold)) for gid, n in norms.items()
    }


def test_reconstruction_lowers_the_output_error(registry):
    for name, sparsity in (("mlp", 0.75), ("cnn", 0.5)):
        calib, held_out = data(name, "calib", 64), data(name, "eval")
        plain, rebuilt = load(name), load(name)
        prune(registry, plain, structured="channel", sparsity=sparsity)
        stats = prune(registry, rebuilt, calib, structured="channel", sparsity=sparsity, reconstruct="true")
        assert relative_error(load(name), rebuilt, held_out) < 0.5 * relative_error(load(name), plain, held_out), name
        fitted = [r for r in stats["reconstruction"] if "error_after" in r]
        assert fitted and all(r["error_after"] < r["error_before"] for r in fitted), stats["reconstruction"]


def duplicated_channel_model(kind: str) -> onnx.ModelProto:
    """Channel 1 of the first layer is a copy of channel 0, so a refit of the next layer can make
    removing it exact. ``kind``: conv (3x3 Conv with padding, then Conv) or matmul."""
    rng = np.random.default_rng(0)
    if kind == "conv":
        w1 = rng.standard_normal((6, 3, 3, 3)).astype(np.float32)
        w1[1] = w1[0]
        inits = [
            numpy_helper.from_array(w1, "w1"),
            numpy_helper.from_array(rng.standard_normal((4, 6, 3, 3)).astype(np.float32), "w2"),
        ]
        nodes = [
            helper.make_node("Conv", ["input", "w1"], ["h"], name="conv1", pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["h"], ["a"], name="relu"),
            helper.make_node("Conv", ["a", "w2"], ["logits"], name="conv2", pads=[1, 1, 1, 1], strides=[2, 2]),
        ]
        shapes = (["batch", 3, 6, 6], ["batch", 4, 3, 3])
    else:
        w1 = rng.standard_normal((8, 6)).astype(np.float32)
        w1[:, 1] = w1[:, 0]
        inits = [
            numpy_helper.from_array(w1, "w1"),
            numpy_helper.from_array(rng.standard_normal((6, 4)).astype(np.float32), "w2"),
        ]
        nodes = [
            helper.make_node("MatMul", ["input", "w1"], ["h"], name="mm1"),
            helper.make_node("Relu", ["h"], ["a"], name="relu"),
            helper.make_node("MatMul", ["a", "w2"], ["logits"], name="mm2"),
        ]
        shapes = (["batch", 8], ["batch", 4])
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, shapes[0])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, shapes[1])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("kind", ["conv", "matmul"])
def test_least_squares_refit_absorbs_a_duplicated_channel(kind):
    original = duplicated_channel_model(kind)
    model = duplicated_channel_model(kind)
    shape = [16 if d.dim_param else d.dim_value for d in original.graph.input[0].type.tensor_type.shape.dim]
    feeds = [{"input": np.random.default_rng(1).standard_normal(shape).astype(np.float32)}]
    analysis = onnxshrink.analyze_channels(model)
    [group] = analysis.prunable
    removal = onnxshrink.remove_channels(analysis, {group.id: [1]})
    assert relative_error(original, model, feeds) > 1e-2  # removing it alone hurts
    [entry] = onnxshrink.reconstruct_consumers(original, model, removal, feeds, ridge=1e-9)
    assert entry["error_after"] < 1e-6 and relative_error(original, model, feeds) < 1e-6


def test_reconstruction_needs_calibration_data(registry):
    with pytest.raises(onnxshrink.UsageError, match="reconstruct=true needs calibration data; pass --data"):
        prune(registry, rg.mlp(), structured="channel", reconstruct="true", min_size=0)


def nonzeros_per_block(array: np.ndarray, axis: int, m: int) -> np.ndarray:
    moved = np.moveaxis(array, axis, -1)
    return np.count_nonzero(moved.reshape(*moved.shape[:-1], -1, m), axis=-1)


@pytest.mark.parametrize("n, m", [(2, 4), (1, 4), (4, 8)])
def test_nm_pattern_keeps_exactly_n_largest_in_every_m(registry, n, m):
    model = load("transformer")
    before = {w.name: w.array() for w in onnxshrink.weight_tensors(model)}
    stats = prune(registry, model, pattern=f"{n}:{m}", min_size=0)
    assert stats["pruned_tensors"] >= 10 and stats["sparsity"] == pytest.approx(1 - n / m)
    for entry in stats["tensors"]:
        weight = next(w for w in onnxshrink.weight_tensors(model) if w.name == entry["name"])
        pruned, axis = weight.array(), entry["axis"]
        assert (nonzeros_per_block(pruned, axis, m) == n).all(), entry["name"]
        kept = np.moveaxis(np.abs(np.where(pruned != 0, before[weight.name], np.nan)), axis, -1)
        dropped = np.moveaxis(np.abs(np.where(pruned == 0, before[weight.name], np.nan)), axis, -1)
        blocks = kept.shape[:-1] + (-1, m)
        assert (np.nanmin(kept.reshape(blocks), axis=-1) >= np.nanmax(dropped.reshape(blocks), axis=-1)).all()


def test_nm_pattern_runs_along_conv_input_channels_and_skips_what_does_not_divide(registry):
    model = load("cnn")
    stats = prune(registry, model, pattern="2:4", min_size=0)
    assert {e["axis"] for e in stats["tensors"] if "Conv" in e["op_types"]} == {1}
    assert stats["skipped"] == [
        {"name": "stem.0.weight", "reason": "input dimension 1 is not a multiple of 4"}
    ]  # 1 input channel
    for entry in stats["tensors"]:
        weight = next(w for w in onnxshrink.weight_tensors(model) if w.name == entry["name"])
        assert (nonzeros_per_block(weight.array(), entry["axis"], 4) == 2).all()


@pytest.mark.parametrize(
    "options, message",
    [
        ({"pattern": "2:4", "sparsity": "0.5"}, "cannot be combined with sparsity"),
        ({"pattern": "4:2"}, "must be N:M with 1 <= N < M"),
        ({"pattern": "2:4", "structured": "channel"}, "cannot be combined with structured=channel"),
        ({"norm": "l2"}, "option 'norm' needs structured=channel"),
        ({"reconstruct": "true"}, "option 'reconstruct' needs structured=channel"),
        ({"structured": "channel", "embeddings": "true"}, "embeddings applies to unstructured pruning"),
        ({"structured": "filters"}, "must be one of none, channel"),
    ],
)
def test_bad_option_combinations_are_usage_errors(registry, options, message):
    with pytest.raises(onnxshrink.UsageError, match=message):
        prepare_steps([PluginSpec("weight_prune", options)], registry)


def test_same_options_same_bytes(registry):
    a, b = load("transformer"), load("transformer")
    calib = data("transformer", "calib", 32)
    for model in (a, b):
        prune(registry, model, calib, structured="channel", sparsity=0.5, scope="global", reconstruct="true")
    assert a.SerializeToString(deterministic=True) == b.SerializeToString(deterministic=True)


def test_cli_prunes_channels_and_reports_them(cli, tmp_path):
    out, report = tmp_path / "mlp_pruned.onnx", tmp_path / "report.json"
    result = cli(
        MODELS / "mlp.onnx",
        "--plugin",
        "weight_prune:structured=channel,sparsity=0.5",
        "-o",
        out,
        "--report",
        report,
        "--no-validate",
    )
    assert result.exit_code == 0, result
    assert out.stat().st_size < 0.5 * (MODELS / "mlp.onnx").stat().st_size
    [step] = json.loads(report.read_text())["steps"]
    assert step["stats"]["channels_removed"] == 192 and step["stats"]["declined"][0]["id"] == "/net/net.4/Gemm"
