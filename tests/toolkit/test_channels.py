"""Channel analysis and removal: one graph per coupling pattern, built here in code.

The check for every pattern: a pruned model computes exactly what the original computes when the
removed channels contribute nothing (their columns in every consumer zeroed; for groups without
consumer weights, such as query/key dimensions, their filters zeroed).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxshrink
from onnxshrink.testing import reference_graphs as rg
from onnxshrink.toolkit.channels.constants import Constants
from onnxshrink.toolkit.channels.layout import SliceEdit
from onnxshrink.toolkit.runtime import run_model
from tests.support.files import MODELS


class Net:
    """A small float graph written op by op; weights come from a fixed seed."""

    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def const(self, value, dtype=np.float32) -> str:
        name = f"c{len(self.inits)}"
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def weight(self, *shape: int) -> str:
        return self.const(self.rng.standard_normal(shape) * 0.4)

    def op(self, op_type: str, *inputs: str, **attrs) -> str:
        out = f"{op_type.lower()}{len(self.nodes)}"
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=out, **attrs))
        return out

    def conv(self, x: str, c_in: int, c_out: int, k: int = 3, group: int = 1, bias: bool = True) -> str:
        inputs = [x, self.weight(c_out, c_in // group, k, k)] + ([self.weight(c_out)] if bias else [])
        return self.op("Conv", *inputs, pads=[k // 2] * 4, group=group)

    def bn(self, x: str, c: int) -> str:
        scale, bias, mean = (self.const(1 + 0.2 * self.rng.standard_normal(c)), self.weight(c), self.weight(c))
        return self.op("BatchNormalization", x, scale, bias, mean, self.const(1 + self.rng.random(c)))

    def head(self, x: str, c: int, classes: int = 5) -> str:
        """GlobalAveragePool → Flatten → Gemm."""
        flat = self.op("Flatten", self.op("GlobalAveragePool", x))
        return self.op("Gemm", flat, self.weight(classes, c), self.weight(classes), transB=1)

    def model(self, inputs: dict[str, list], outputs: list[str]) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes,
            "g",
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs.items()],
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs],
            self.inits,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        inferred = onnx.shape_inference.infer_shapes(model)
        model.graph.ClearField("output")
        model.graph.output.extend(inferred.graph.output)  # outputs with their inferred shapes
        onnx.checker.check_model(model, full_check=True)
        return model


def residual_with_projection() -> onnx.ModelProto:
    """Stem, an identity residual block, a block whose shortcut is a 1x1 Conv + BN projection (8 → 12)."""
    n = Net()
    x0 = n.op("Relu", n.bn(n.conv("input", 3, 8), 8))
    y = n.bn(n.conv(n.op("Relu", n.bn(n.conv(x0, 8, 8), 8)), 8, 8), 8)
    x1 = n.op("Relu", n.op("Add", y, x0))
    y = n.bn(n.conv(n.op("Relu", n.bn(n.conv(x1, 8, 12), 12)), 12, 12), 12)
    shortcut = n.bn(n.conv(x1, 8, 12, k=1, bias=False), 12)
    x2 = n.op("Relu", n.op("Add", y, shortcut))
    return n.model({"input": ["batch", 3, 8, 8]}, [n.head(x2, 12)])


def concatenated() -> onnx.ModelProto:
    """Two Conv branches (6 and 5 channels) concatenated, read by one Conv: the second starts at 6."""
    n = Net()
    a = n.op("Relu", n.conv("input", 4, 6))
    b = n.op("Relu", n.conv("input", 4, 5))
    joined = n.op("Concat", a, b, axis=1)
    return n.model({"input": ["batch", 4, 6, 6]}, [n.head(n.op("Relu", n.conv(joined, 11, 7)), 7)])


def concatenated_with_input() -> onnx.ModelProto:
    """A Conv's channels concatenated after the model input: the Conv after the Concat keeps the
    input's columns and loses only the pruned channels' (offset 4)."""
    n = Net()
    x = n.op("Relu", n.conv("input", 4, 6))
    return n.model(
        {"input": ["batch", 4, 6, 6]}, [n.head(n.op("Relu", n.conv(n.op("Concat", "input", x, axis=1), 10, 5)), 5)]
    )


def depthwise() -> onnx.ModelProto:
    """Conv → depthwise Conv → BN → pointwise Conv → depthwise Conv with multiplier 2 → head."""
    n = Net()
    x = n.op("Relu", n.conv("input", 4, 8))
    x = n.op("Relu", n.bn(n.conv(x, 8, 8, group=8), 8))
    x = n.conv(x, 8, 6, k=1)
    x = n.op("Relu", n.conv(x, 6, 12, group=6))
    return n.model({"input": ["batch", 4, 6, 6]}, [n.head(x, 12)])


def grouped() -> onnx.ModelProto:
    """Conv (8) → grouped Conv (group=2, 8 → 8) → Conv: both groups must lose as many channels."""
    n = Net()
    x = n.op("Relu", n.conv("input", 4, 8))
    x = n.op("Relu", n.conv(x, 8, 8, group=2))
    return n.model({"input": ["batch", 4, 6, 6]}, [n.head(n.op("Relu", n.conv(x, 8, 6)), 6)])


def flatten_and_reshape() -> onnx.ModelProto:
    """Conv → MaxPool → [N, 6, 2, 2] read by a Gemm after Flatten and by one after Reshape [-1, 24]."""
    n = Net()
    pooled = n.op("MaxPool", n.op("Relu", n.conv("input", 4, 6)), kernel_shape=[2, 2], strides=[2, 2])
    via_flatten = n.op("Gemm", n.op("Flatten", pooled), n.weight(5, 24), n.weight(5), transB=1)
    reshaped = n.op("Reshape", pooled, n.const([-1, 24], np.int64))
    via_reshape = n.op("Gemm", reshaped, n.weight(24, 5), n.weight(5))
    return n.model({"input": ["batch", 4, 4, 4]}, [via_flatten, via_reshape])


def feeds_for(model: onnx.ModelProto, batch: int = 3, seed: int = 7) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for value in model.graph.input:
        shape = [batch if d.dim_param else d.dim_value for d in value.type.tensor_type.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
        feeds[value.name] = rng.random(shape).astype(dtype) if value.name != "mask" else np.ones(shape, dtype)
    return [feeds]


def without_contribution(model: onnx.ModelProto, selection: dict[str, list[int]]) -> onnx.ModelProto:
    """A copy where the selected channels contribute nothing: their consumer columns are zero."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    analysis = onnxshrink.analyze_channels(out)
    nodes = list(out.graph.node)
    constants = Constants(out)
    for group_id, channels in selection.items():
        edits = [e for e in analysis.edits(analysis.group(group_id)) if isinstance(e, SliceEdit)]
        for edit in [e for e in edits if e.role == "sink"] or [e for e in edits if e.role in ("source", "param")]:
            node = nodes[edit.node]
            value = constants.get(node.input[edit.input]).copy()
            index = [slice(None)] * value.ndim
            index[edit.axis] = (
                edit.offset + np.asarray(channels)[:, None] * edit.repeat + np.arange(edit.repeat)
            ).ravel()
            value[tuple(index)] = 0
            constants.write(node, edit.input, value)
    return out


def half_of_each(analysis: onnxshrink.ChannelAnalysis, seed: int = 3) -> dict[str, list[int]]:
    rng = np.random.default_rng(seed)
    return {g.id: onnxshrink.select_channels(g, rng.random(g.size), g.size // 2) for g in analysis.prunable}


def prune_copy(
    model: onnx.ModelProto, selection: dict[str, list[int]]
) -> tuple[onnx.ModelProto, onnxshrink.ChannelRemoval]:
    pruned = onnx.ModelProto()
    pruned.CopyFrom(model)
    removal = onnxshrink.remove_channels(onnxshrink.analyze_channels(pruned), selection)
    onnx.checker.check_model(pruned, full_check=True)
    return pruned, removal


def assert_same_outputs(a: onnx.ModelProto, b: onnx.ModelProto, feeds) -> None:
    for out_a, out_b in zip(run_model(a, feeds), run_model(b, feeds)):
        for name in out_a:
            assert out_a[name].shape == out_b[name].shape, name
            np.testing.assert_allclose(out_b[name], out_a[name], rtol=1e-4, atol=1e-5, err_msg=name)


def groups_by_sources(analysis) -> dict[tuple[str, ...], onnxshrink.ChannelGroup]:
    return {tuple(g.sources): g for g in analysis.groups}


PATTERNS = {
    "conv_bn_residual": rg.conv_bn_residual,
    "residual_with_projection": residual_with_projection,
    "mlp_gemm_matmul": rg.mlp,
    "concat": concatenated,
    "concat_with_input": concatenated_with_input,
    "depthwise": depthwise,
    "grouped_conv": grouped,
    "flatten_and_reshape": flatten_and_reshape,
    "attention_heads": rg.tiny_transformer,
    "single_head_attention": rg.attention_with_mask,
    "constant_node_weights": rg.constant_node_weights,
}


@pytest.mark.parametrize("pattern", list(PATTERNS))
def test_pruned_model_equals_original_when_removed_channels_contribute_nothing(pattern):
    model = PATTERNS[pattern]()
    analysis = onnxshrink.analyze_channels(model)
    assert analysis.prunable, analysis.describe()
    feeds = feeds_for(model)
    selections = [{g.id: sel} for g in analysis.prunable for sel in [half_of_each(analysis)[g.id]] if sel]
    selections.append({k: v for k, v in half_of_each(analysis, seed=11).items() if v})  # every group at once
    for selection in selections:
        pruned, removal = prune_copy(model, selection)
        assert removal.params_after < removal.params_before, selection
        assert_same_outputs(without_contribution(model, selection), pruned, feeds)


def test_conv_bn_relu_conv_and_residual_add_couple_as_expected():
    groups = groups_by_sources(onnxshrink.analyze_channels(residual_with_projection()))
    stem_group = groups[("conv0", "conv6")]  # the stem and the identity block's last Conv meet at its Add
    assert stem_group.prunable and stem_group.sinks == ["conv3", "conv10", "conv15"]  # both conv1s and the shortcut
    assert groups[("conv13", "conv15")].prunable  # the projection block's last Conv and its shortcut
    assert groups[("conv13", "conv15")].sinks == ["gemm21"]
    assert groups[("conv3",)].sinks == ["conv6"]
    assert "graph output" in groups[("gemm21",)].reasons[0]


def test_concat_offsets_and_depthwise_and_grouped_constraints():
    concat = groups_by_sources(onnxshrink.analyze_channels(concatenated()))
    assert [(s.consumer, s.offset) for s in concat[("conv2",)].slots] == [("conv5", 6)]
    assert [(s.consumer, s.offset) for s in concat[("conv0",)].slots] == [("conv5", 0)]
    assert [
        (s.consumer, s.offset) for s in onnxshrink.analyze_channels(concatenated_with_input()).group("conv0").slots
    ] == [("conv3", 4)]

    dw = groups_by_sources(onnxshrink.analyze_channels(depthwise()))
    first, pointwise = dw[("conv0",)], dw[("conv5",)]
    assert first.sinks == ["conv5"] and first.prunable  # the depthwise Conv carries its channels through
    assert pointwise.sinks == ["gemm10"] and [s.repeat for s in pointwise.slots] == [2]  # multiplier 2

    gr = groups_by_sources(onnxshrink.analyze_channels(grouped()))
    assert gr[("conv0",)].blocks == 2 and gr[("conv2",)].blocks == 2
    assert onnxshrink.select_channels(gr[("conv0",)], np.arange(8.0), 3) == [0, 4]  # one per group, rounded down


def test_flatten_and_reshape_before_gemm_resize_columns_and_the_shape_constant():
    model = flatten_and_reshape()
    [group] = onnxshrink.analyze_channels(model).prunable
    assert sorted((s.consumer, s.repeat) for s in group.slots) == [("gemm4", 4), ("gemm6", 4)]
    pruned, _ = prune_copy(model, {group.id: [1, 4]})
    shape = next(n for n in pruned.graph.node if n.op_type == "Reshape").input[1]
    assert numpy_helper.to_array(next(t for t in pruned.graph.initializer if t.name == shape)).tolist() == [-1, 16]


def test_attention_heads_are_removed_whole_and_their_reshapes_rewritten():
    model = rg.tiny_transformer()
    analysis = onnxshrink.analyze_channels(model)
    heads = analysis.group("blocks.0.attn.q.matmul")
    assert heads.sources == ["blocks.0.attn.q.matmul", "blocks.0.attn.k.matmul", "blocks.0.attn.v.matmul"]
    assert (heads.size, heads.unit, heads.sinks) == (32, 8, ["blocks.0.attn.proj.matmul"])
    with pytest.raises(ValueError, match="whole units of 8"):
        onnxshrink.remove_channels(analysis, {heads.id: [0, 1, 2]})
    pruned, _ = prune_copy(model, {heads.id: list(range(8, 16))})
    values = {t.name: numpy_helper.to_array(t).tolist() for t in pruned.graph.initializer}
    assert values["blocks.0.attn.q_shape"] == values["blocks.0.attn.v_shape"] == [-1, 16, 3, 8]
    assert values["blocks.0.attn.merge_shape"] == [-1, 16, 24]
    assert values["blocks.1.attn.q_shape"] == [-1, 16, 4, 8]  # the other block keeps its 4 heads


def declined_cases():
    n = Net()
    parts = n.op("Relu", n.conv("input", 4, 6))
    n.nodes.append(
        helper.make_node("Split", [parts, n.const([3, 3], np.int64)], ["half_a", "half_b"], name="split", axis=1)
    )
    split = n.model({"input": ["batch", 4, 6, 6]}, [n.head("half_a", 3, 2), n.head("half_b", 3, 2)])

    n = Net()
    x = n.op("Relu", n.conv("input", 4, 6))
    odd = n.op("Reshape", n.op("GlobalAveragePool", x), n.const([-1, 3, 2], np.int64))
    hard_reshape = n.model({"input": ["batch", 4, 6, 6]}, [n.op("MatMul", odd, n.weight(2, 5))])

    return {
        "split": (split, "conv0", "Split 'split' splits the channels"),
        "hard_coded_reshape": (
            hard_reshape,
            "conv0",
            "reshapes the channel axis in a way the analysis does not follow",
        ),
        "unknown_op": (rg.contrib_op_weight(), "mm", "FusedMatMul 'fused' is not known to keep channels apart"),
        "graph_output": (rg.mlp(), "fc2", "they reach graph output 'logits'"),
        "shared_weight": (rg.shared_weight(), "mm1", "weight 'W' of 'mm1' is shared with other nodes"),
        "layernorm": (
            rg.tiny_transformer(),
            "embed.matmul",
            "LayerNormalization 'blocks.0.ln1.out' normalises over the channels",
        ),
        "subgraph": (rg.if_subgraph(), "mm_in", "If 'branch' is not known to keep channels apart"),
    }


DECLINED = declined_cases()


@pytest.mark.parametrize("case", list(DECLINED))
def test_declined_groups_are_reported_and_the_graph_stays_valid(case):
    model, group_id, reason = DECLINED[case]
    analysis = onnxshrink.analyze_channels(model)
    group = analysis.group(group_id)
    assert not group.prunable and any(reason in r for r in group.reasons), group.reasons
    assert group.describe()["reasons"] == group.reasons
    with pytest.raises(ValueError, match="is declined"):
        onnxshrink.remove_channels(analysis, {group_id: [0]})

    pruned, _ = prune_copy(model, half_of_each(onnxshrink.analyze_channels(model)))  # the others still go
    shapes = [{k: v.shape for k, v in out.items()} for out in run_model(model, feeds_for(model))]
    assert [{k: v.shape for k, v in out.items()} for out in run_model(pruned, feeds_for(model))] == shapes


def test_selection_rules_and_misuse():
    analysis = onnxshrink.analyze_channels(rg.mlp())
    group = analysis.group("fc1")
    assert onnxshrink.select_channels(group, np.arange(32.0)[::-1], 3) == [29, 30, 31]
    assert len(onnxshrink.select_channels(group, np.zeros(32), 99)) == group.max_removable == 31
    with pytest.raises(ValueError, match="must be in 0..31"):
        onnxshrink.remove_channels(analysis, {"fc1": [32]})
    with pytest.raises(KeyError, match="no channel group 'nope'"):
        analysis.group("nope")
    onnxshrink.remove_channels(analysis, {"fc1": [0]})
    with pytest.raises(ValueError, match="already used"):
        onnxshrink.remove_channels(analysis, {"fc1": [1]})


def test_models_cnn_groups_and_determinism():
    model = onnx.load(MODELS / "cnn.onnx")
    analysis = onnxshrink.analyze_channels(model)
    stem = analysis.group("/stem/stem.0/Conv")
    assert stem.sources == ["/stem/stem.0/Conv", "/layer1/layer1.0/conv2/Conv", "/layer1/layer1.1/conv2/Conv"]
    assert "/layer2/layer2.0/shortcut/shortcut.0/Conv" in analysis.group("/layer2/layer2.0/conv2/Conv").sources
    assert [g.id for g in analysis.declined] == ["/fc/Gemm"]
    selection = half_of_each(analysis)
    a, _ = prune_copy(model, selection)
    b, _ = prune_copy(model, selection)
    assert a.SerializeToString(deterministic=True) == b.SerializeToString(deterministic=True)
    calib = np.load(MODELS / "cnn_calib.npz")["input"][:16]
    assert_same_outputs(without_contribution(model, selection), a, [{"input": calib}])
