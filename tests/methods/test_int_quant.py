"""int_quant: quantization schemes against a numpy reference, the stored forms onnxruntime folds or fuses,
every mode on graphs built in code (Constant nodes, shared weights, If/Loop, fp16, opset 11, custom ops,
already-quantized models, attention masks, detection heads), exclusion, sensitivity and auto."""

from __future__ import annotations

import itertools
import os

import ml_dtypes
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxshrink
from onnxshrink.errors import UsageError
from onnxshrink.plugin.method import PluginSpec
from onnxshrink.run.pipeline import prepare_steps, run_steps
from onnxshrink.testing import reference_graphs as rg

RNG = np.random.default_rng(1234)


def feeds_for(model: onnx.ModelProto, count: int = 8, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    feeds = []
    for _ in range(count):
        feed = {}
        for value in model.graph.input:
            if value.name in {t.name for t in model.graph.initializer}:
                continue
            t = value.type.tensor_type
            shape = [d.dim_value if d.dim_value > 0 else 4 for d in t.shape.dim]
            dtype = helper.tensor_dtype_to_np_dtype(t.elem_type)
            feed[value.name] = rng.standard_normal(shape).astype(dtype)
        feeds.append(feed)
    return feeds


def quantize_model(registry, model, feeds=None, **options):
    steps = prepare_steps([PluginSpec("int_quant", {k: str(v) for k, v in options.items()})], registry)
    [result] = run_steps(
        model,
        steps,
        seed=0,
        calibration=(lambda: feeds) if feeds is not None else None,
        calibration_is_synthetic=feeds is None,
    )
    return result


def run(model, feeds, accuracy_level=None):
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if accuracy_level is not None:
        opts.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", str(accuracy_level))
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return [sess.run(None, f) for f in feeds]


def cosine(a, b):
    worst = 1.0
    for i in range(len(a[0])):
        x = np.concatenate([np.ravel(r[i]) for r in a]).astype(np.float64)
        y = np.concatenate([np.ravel(r[i]) for r in b]).astype(np.float64)
        worst = min(worst, float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y))))
    return worst


def session_ops(model) -> list[str]:
    """Op types of the graph onnxruntime actually runs (after its load-time optimizations)."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.optimized_model_filepath = os.path.join(folder, "optimized.onnx")
        ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        optimized = onnx.load(opts.optimized_model_filepath)
    return [
        (f"{n.domain}::" if n.domain else "") + n.op_type
        for g, _ in onnxshrink.iter_graphs(optimized.graph)
        for n in g.node
    ]


# --- schemes: quantize / dequantize against a plain numpy reference -------------------------------


def reference_blocks(w, bits, symmetric, axis, block):
    """Blocks along ``axis``: every other index on its own, ``block`` consecutive entries along ``axis``."""
    moved = np.moveaxis(w, axis, -1)
    flat = moved.reshape(-1, moved.shape[-1])
    q = np.zeros(flat.shape, np.int64)
    dequant = np.zeros(flat.shape, np.float32)
    for r in range(flat.shape[0]):
        for start in range(0, flat.shape[1], block):
            chunk = flat[r, start : start + block]
            if symmetric:
                qmax = 2 ** (bits - 1) - 1
                scale = np.float32(np.abs(chunk).max()) / np.float32(qmax) or np.float32(1)
                q[r, start : start + block] = np.clip(np.round(chunk / scale), -qmax, qmax)
                dequant[r, start : start + block] = q[r, start : start + block].astype(np.float32) * scale
            else:
                qmax = 2**bits - 1
                low, high = min(chunk.min(), 0), max(chunk.max(), 0)
                scale = np.float32(high - low) / np.float32(qmax) or np.float32(1)
                zp = np.clip(np.round(-low / scale), 0, qmax)
                q[r, start : start + block] = np.clip(np.round(chunk / scale) + zp, 0, qmax)
                dequant[r, start : start + block] = (
                    q[r, start : start + block].astype(np.float32) - np.float32(zp)
                ) * scale
    shape = moved.shape
    return np.moveaxis(q.reshape(shape), -1, axis), np.moveaxis(dequant.reshape(shape), -1, axis)


SCHEMES = list(itertools.product((8, 4, 2), (True, False), ("tensor", "channel", "block")))


@pytest.mark.parametrize("bits,symmetric,granularity", SCHEMES)
def test_scheme_matches_numpy_reference(bits, symmetric, granularity):
    w = (RNG.standard_normal((12, 40)) * RNG.uniform(0.1, 3, size=(1, 40))).astype(np.float32)
    w[3, :] = 0  # a row of zeros must not divide by zero
    if granularity == "block":
        qt = onnxshrink.quantize(w, bits, symmetric=symmetric, axis=1, block_size=16)
        q_ref, deq_ref = reference_blocks(w, bits, symmetric, 1, 16)
        assert qt.scale.shape == (12, 3)
    else:
        axis = 1 if granularity == "channel" else None
        qt = onnxshrink.quantize(w, bits, symmetric=symmetric, axis=axis)
        if axis is None:
            q_ref, deq_ref = reference_blocks(w.reshape(1, -1), bits, symmetric, 1, w.size)
            q_ref, deq_ref = q_ref.reshape(w.shape), deq_ref.reshape(w.shape)
        else:
            q_ref, deq_ref = reference_blocks(w.T.copy(), bits, symmetric, 1, 12)
            q_ref, deq_ref = q_ref.T, deq_ref.T
            assert qt.scale.shape == (40,)
    np.testing.assert_array_equal(qt.values.astype(np.int64), q_ref)
    np.testing.assert_allclose(qt.dequantize(), deq_ref, rtol=1e-6, atol=1e-7)
    # round-trip error is at most half a step of each group's scale
    step = qt.full(qt.scale)
    assert np.all(np.abs(qt.dequantize() - w) <= step / 2 + 1e-6)
    assert qt.values.dtype == (np.int8 if symmetric else np.uint8)
    lo, hi = onnxshrink.quant_range(bits, symmetric)
    assert qt.values.min() >= lo and qt.values.max() <= hi


def test_blocks_on_a_length_that_is_not_a_multiple_of_the_block():
    w = RNG.standard_normal((37, 5)).astype(np.float32)
    qt = onnxshrink.quantize(w, 4, axis=0, block_size=16)
    _, deq_ref = reference_blocks(w, 4, True, 0, 16)
    assert qt.scale.shape == (3, 5)
    np.testing.assert_allclose(qt.dequantize(), deq_ref, rtol=1e-6)


def test_quantize_rejects_bad_arguments():
    w = np.ones((4, 4), np.float32)
    with pytest.raises(ValueError, match="bits"):
        onnxshrink.quantize(w, 9)
    with pytest.raises(ValueError, match="axis"):
        onnxshrink.quantize(w, 8, axis=2)
    with pytest.raises(ValueError, match="needs an axis"):
        onnxshrink.quantize(w, 4, block_size=2)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_pack_bits_round_trip_and_onnx_int4_layout(bits):
    values = RNG.integers(0, 2**bits, size=37).astype(np.uint8)
    packed = onnxshrink.pack_bits(values, bits)
    assert packed.size == -(-37 * bits // 8)
    np.testing.assert_array_equal(onnxshrink.unpack_bits(packed, bits, 37), values)
    if bits == 4:  # same nibble order as ONNX's own UINT4 tensors
        assert numpy_helper.from_array(values.astype(ml_dtypes.uint4)).raw_data == packed.tobytes()


# --- stored forms: what onnxruntime does with them -------------------------------------------------


def _single_op_model(nodes, inits, opset, w_input_shape, op="MatMul"):
    graph = helper.make_graph(
        [*nodes, helper.make_node(op, ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, w_input_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10 if opset >= 21 else 8
    return model


@pytest.mark.parametrize("bits,symmetric,granularity", [s for s in SCHEMES if s[2] != "tensor" or s[0] == 8])
def test_storage_chain_is_folded_and_exact(bits, symmetric, granularity):
    w = RNG.standard_normal((40, 24)).astype(np.float32)
    axis, block = (1, None) if granularity == "channel" else (0, 16) if granularity == "block" else (None, None)
    qt = onnxshrink.quantize(w, bits, symmetric=symmetric, axis=axis, block_size=block)
    nodes, inits = onnxshrink.storage_chain(qt, "w", {"x", "y", "w"})
    model = _single_op_model(nodes, inits, 13, ["n", 40])
    dense = _single_op_model([], [numpy_helper.from_array(qt.dequantize(), "w")], 13, ["n", 40])
    assert session_ops(model) == ["MatMul"]  # the whole chain folded at session creation
    feeds = [{"x": RNG.standard_normal((3, 40)).astype(np.float32)}]
    np.testing.assert_array_equal(run(model, feeds)[0][0], run(dense, feeds)[0][0])
    stored = sum(len(t.raw_data) for t in inits)
    assert stored < w.nbytes * (bits + 2) / 32 + 400  # values at `bits` bits, plus scales and shapes


def test_storage_chain_for_conv_and_fp16():
    w = RNG.standard_normal((8, 4, 3, 3)).astype(np.float32)
    qt = onnxshrink.quantize(w.reshape(8, -1), 4, axis=1, block_size=16)
    nodes, inits = onnxshrink.storage_chain(qt, "w", {"x", "y", "w"}, shape=w.shape)
    model = _single_op_model(nodes, inits, 13, [1, 4, 6, 6], op="Conv")
    dense = _single_op_model(
        [], [numpy_helper.from_array(qt.dequantize().reshape(w.shape), "w")], 13, [1, 4, 6, 6], op="Conv"
    )
    assert session_ops(model) == session_ops(dense)  # folded: onnxruntime runs the dense graph
    feeds = [{"x": RNG.standard_normal((1, 4, 6, 6)).astype(np.float32)}]
    np.testing.assert_array_equal(run(model, feeds)[0][0], run(dense, feeds)[0][0])
    nodes, _ = onnxshrink.storage_chain(onnxshrink.quantize(w, 8, axis=0), "w16", set(), dtype=TensorProto.FLOAT16)
    assert nodes[-1].op_type == "Cast" and nodes[-1].attribute[0].i == TensorProto.FLOAT16


@pytest.mark.parametrize(
    "bits,granularity", [(8, "tensor"), (8, "channel"), (8, "block"), (4, "block"), (4, "channel"), (2, "block")]
)
def test_dequantize_linear_fuses_into_matmulnbits_and_is_exact(bits, granularity):
    w = RNG.standard_normal((64, 32)).astype(np.float32)
    axis, block = (1, None) if granularity == "channel" else (0, 16) if granularity == "block" else (None, None)
    qt = onnxshrink.quantize(w, bits, axis=axis, block_size=block)
    nodes, inits = onnxshrink.dequantize_linear(qt, "w", {"x", "y", "w"})
    model = _single_op_model(nodes, inits, onnxshrink.required_opset(qt), ["n", 64])
    assert session_ops(model) == ["com.microsoft::MatMulNBits"]
    x = RNG.standard_normal((3, 64)).astype(np.float32)
    out = run(model, [{"x": x}], accuracy_level=0)[0][0]
    np.testing.assert_allclose(out, x @ qt.dequantize(), rtol=1e-4, atol=1e-4)


def test_required_opset_and_upgrade():
    w = RNG.standard_normal((8, 8)).astype(np.float32)
    assert onnxshrink.required_opset(onnxshrink.quantize(w, 8)) == 10
    assert onnxshrink.required_opset(onnxshrink.quantize(w, 8, axis=1)) == 13
    assert onnxshrink.required_opset(onnxshrink.quantize(w, 4, axis=0, block_size=4)) == 21
    assert onnxshrink.required_opset(onnxshrink.quantize(w, 2, axis=0, block_size=4)) == 25
    assert onnxshrink.required_opset(onnxshrink.quantize(w, 4, axis=0, block_size=4), "storage") == 10
    upgraded = onnxshrink.upgrade_opset(rg.conv_opset11(), 21)
    assert onnxshrink.model_opset(upgraded) == 21 and upgraded.ir_version >= 10
    with pytest.raises(ValueError, match="cannot convert"):
        onnxshrink.upgrade_opset(rg.if_subgraph(), 13)  # no adapter down from If-16


def test_quantization_markers():
    for name in rg.REFERENCE_GRAPHS:
        expected = ["DequantizeLinear node 'dequantize'"] if name == "qdq_quantized" else []
        assert onnxshrink.quantization_markers(rg.REFERENCE_GRAPHS[name]()) == expected, name


# --- the method -----------------------------------------------------------------------------------

GRAPHS = [
    "mlp",
    "conv_bn_residual",
    "shared_weight",
    "constant_node_weights",
    "if_subgraph",
    "loop_subgraph",
    "fp16_mlp",
    "conv_opset11",
    "attention_with_mask",
]


@pytest.mark.parametrize("mode", ["storage", "weights", "dynamic", "static"])
@pytest.mark.parametrize("graph", GRAPHS)
def test_every_mode_keeps_graphs_valid_and_close(registry, graph, mode):
    model = rg.REFERENCE_GRAPHS[graph]()
    feeds = feeds_for(model)
    reference = run(model, feeds)
    float_bytes = model.ByteSize()
    stats = quantize_model(registry, model, feeds, mode=mode, min_size=0).stats  # the pipeline checks onnx + ORT
    expected = len(onnxshrink.weight_tensors(rg.REFERENCE_GRAPHS[graph]()))
    assert stats["quantized_tensors"] == expected, stats["left"]
    assert [item for item in stats["left"] if "tensor" in item] == []  # static may keep nodes float (said in "left")
    assert cosine(reference, run(model, feeds)) > 0.999
    assert stats["weight_bytes_after"] < stats["weight_bytes_before"]
    if mode in (
        "storage",
        "weights",
    ):  # QDQ and dynamic add activation nodes, which outweigh the saving on graphs this small
        assert model.ByteSize() < float_bytes
    assert [w.name for w in onnxshrink.weight_tensors(model) if len(w.shape) > 1] == []  # no float weight left


def test_storage_on_the_cnn_reference_shrinks_4x_and_runs_the_float_graph(registry):
    model = rg.conv_bn_residual(channels=32)
    feeds = feeds_for(model)
    floats = sum(w.size * 4 for w in onnxshrink.weight_tensors(model))
    stats = quantize_model(registry, model, feeds, mode="storage").stats
    assert stats["forms"] == {"storage": 4}
    assert stats["weight_bytes_before"] == floats
    assert stats["weight_bytes_after"] < floats / 3.5
    assert "Cast" not in session_ops(model) and "Mul" not in session_ops(model)
    assert all(
        item["scheme"] == "int8 symmetric per-channel(axis=0)"
        for item in stats["quantized"]
        if item["op_types"] == ["Conv"]
    )


def test_weights_mode_writes_matmulnbits_and_keeps_conv_in_storage(registry):
    model = rg.conv_bn_residual()
    feeds = feeds_for(model)
    stats = quantize_model(registry, model, feeds, mode="weights", min_size=0).stats
    forms = {item["tensor"]: item for item in stats["quantized"]}
    assert (
        forms["fc.weight"]["form"] == "matmulnbits"
        and forms["fc.weight"]["scheme"] == "int8 symmetric blockwise(axis=0, block=16)"
    )
    assert "transB=1" in forms["fc.weight"]["note"]  # stored (K, N)
    conv = [item for item in stats["quantized"] if item["op_types"] == ["Conv"]]
    assert len(conv) == 3 and all(
        item["form"] == "storage" and "Conv has no weight-only integer kernel" in item["note"] for item in conv
    )
    assert stats["opset"] == {"before": 17, "after": 17}
    assert {"domain": "com.microsoft", "version": 1} in [
        {"domain": o.domain, "version": o.version} for o in model.opset_import
    ]
    assert "com.microsoft::MatMulNBits" in session_ops(model)
    model = rg.conv_bn_residual()
    stats = quantize_model(registry, model, feeds, mode="weights", min_size=0, dq_conv="true").stats
    assert stats["forms"] == {"dequantize_linear": 3, "matmulnbits": 1}


@pytest.mark.parametrize("bits", [8, 4, 2])
def test_matmulnbits_is_exact_at_accuracy_level_0_and_needs_no_opset_change(registry, bits):
    model = rg.mlp()  # Gemm → Relu → MatMul: both get the kernel (the Gemm → Relu too)
    feeds = feeds_for(model)
    reference_model = rg.mlp()
    quantize_model(registry, reference_model, feeds, mode="storage", bits=bits, block_size=16, min_size=0)
    stats = quantize_model(registry, model, feeds, mode="weights", bits=bits, block_size=16, min_size=0).stats
    assert stats["forms"] == {"matmulnbits": 2} and stats["opset"] == {"before": 17, "after": 17}
    assert session_ops(model).count("com.microsoft::MatMulNBits") == 2
    for got, want in zip(run(model, feeds), run(reference_model, feeds)):  # same integers and scales as storage
        np.testing.assert_allclose(got[0], want[0], rtol=1e-4, atol=1e-5)


def test_matmulnbits_accuracy_level_is_written(registry):
    model = rg.mlp()
    stats = quantize_model(registry, model, mode="weights", min_size=0, accuracy_level=4).stats
    nodes = [n for n in model.graph.node if n.op_type == "MatMulNBits"]
    assert len(nodes) == 2 and all(
        helper.get_attribute_value(next(a for a in n.attribute if a.name == "accuracy_level")) == 4 for n in nodes
    )
    assert all("accuracy_level 4" in item["note"] for item in stats["quantized"])


def test_dequantize_linear_format_fuses_and_falls_back_where_onnxruntime_does_not(registry):
    model = rg.conv_bn_residual()
    stats = quantize_model(
        registry, model, feeds_for(model), mode="weights", weights_format="dequantize_linear", min_size=0
    ).stats
    forms = {item["tensor"]: item for item in stats["quantized"]}
    assert forms["fc.weight"]["form"] == "dequantize_linear" and "transB set to 0" in forms["fc.weight"]["note"]
    assert all(
        item["form"] == "storage" and "does not fuse DequantizeLinear with Conv" in item["note"]
        for item in stats["quantized"]
        if item["op_types"] == ["Conv"]
    )
    assert "com.microsoft::MatMulNBits" in session_ops(model) and "DequantizeLinear" not in session_ops(model)


def test_dequantize_linear_int4_and_int2_upgrade_the_opset(registry):
    for bits, opset in ((4, 21), (2, 25)):
        model = rg.mlp()
        feeds = feeds_for(model)
        reference = run(model, feeds)
        stats = quantize_model(
            registry,
            model,
            feeds,
            mode="weights",
            weights_format="dequantize_linear",
            bits=bits,
            min_size=0,
            block_size=16,
        ).stats
        assert stats["opset"] == {"before": 17, "after": opset}
        by_name = {item["tensor"]: item for item in stats["quantized"]}
        assert by_name["fc2.weight"]["form"] == "dequantize_linear"
        assert by_name["fc2.weight"]["scheme"] == f"int{bits} symmetric blockwise(axis=0, block=16)"
        # Gemm → Relu: onnxruntime fuses those into FusedGemm before DequantizeLinear → MatMulNBits,
        # so that weight is rebuilt in the storage form rather than left to dequantize on every run
        assert by_name["fc1.weight"]["form"] == "storage" and "did not fuse" in by_name["fc1.weight"]["note"]
        ops = session_ops(model)
        assert ops.count("com.microsoft::MatMulNBits") == 1 and "DequantizeLinear" not in ops
        if bits == 4:  # 2-bit symmetric is ternary: it runs, but this small random MLP is no test of accuracy
            assert cosine(reference, run(model, feeds)) > 0.97


def test_int4_storage_is_about_7x_smaller_on_weights(registry):
    model = rg.mlp()
    stats = quantize_model(registry, model, feeds_for(model), mode="storage", bits=4, block_size=32, min_size=0).stats
    assert stats["opset"]["after"] == 17  # storage needs no opset change
    assert all(
        item["scheme"] == "int4 symmetric blockwise(axis=1, block=32)" or "axis=0" in item["scheme"]
        for item in stats["quantized"]
    )
    w = RNG.standard_normal((512, 256)).astype(np.float32)
    nodes, inits = onnxshrink.storage_chain(onnxshrink.quantize(w, 4, axis=0, block_size=32), "w", set())
    assert w.nbytes / sum(len(t.raw_data) for t in inits) > 6.3


def test_without_opset_upgrade_never_writes_axis_at_opset_11(registry):
    model = rg.conv_opset11()
    stats = quantize_model(
        registry, model, feeds_for(model), mode="weights", weights_format="dequantize_linear", opset_upgrade="false"
    ).stats
    assert onnxshrink.model_opset(model) == 11
    dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    assert dq and all(not n.attribute for n in dq)  # per-tensor: no axis attribute at opset 11
    assert any("per-tensor" in note for note in stats["notes"])
    model = rg.conv_opset11()
    stats = quantize_model(registry, model, feeds_for(model), mode="weights", weights_format="dequantize_linear").stats
    assert stats["opset"] == {"before": 11, "after": 13}


def test_dynamic_mode_fuses_into_dynamic_quantize_matmul(registry):
    model = rg.shared_weight()
    stats = quantize_model(registry, model, feeds_for(model), mode="dynamic").stats
    assert stats["forms"] == {"dynamic": 1} and stats["quantized"][0]["shared_by"] == 2
    assert session_ops(model).count("com.microsoft::DynamicQuantizeMatMul") == 2
    model = rg.conv_bn_residual()
    stats = quantize_model(registry, model, feeds_for(model), mode="dynamic", min_size=0).stats
    assert stats["forms"] == {"storage": 3, "dynamic": 1}
    assert "ConvInteger" not in session_ops(model)


def test_static_mode_fuses_conv_into_qlinearconv(registry):
    model = rg.conv_bn_residual(channels=16)
    feeds = feeds_for(model, 16)
    reference = run(model, feeds)
    stats = quantize_model(registry, model, feeds, mode="static", min_size=0).stats
    assert stats["forms"] == {"qdq": 4}
    assert stats["static"]["calibration"] == "minmax" and stats["static"]["calibration_feeds"] == 16
    assert stats["static"]["calibration_samples"] == 16 * 4
    ops = session_ops(model)
    assert ops.count("com.microsoft::QLinearConv") == 3
    assert cosine(reference, run(model, feeds)) > 0.999


@pytest.mark.parametrize("calibration", ["percentile", "entropy"])
def test_static_calibration_methods(registry, calibration):
    model = rg.conv_bn_residual(channels=16)
    feeds = feeds_for(model, 8)
    reference = run(model, feeds)
    stats = quantize_model(registry, model, feeds, mode="static", calibration=calibration).stats
    assert stats["static"]["calibration"] == calibration
    assert cosine(reference, run(model, feeds)) > 0.99


def test_static_keeps_a_blown_concat_float(registry):
    model = rg.detection_head()
    feeds = [{"input": np.random.default_rng(i).standard_normal((4, 4, 8, 8)).astype(np.float32)} for i in range(8)]
    reference = run(model, feeds)
    stats = quantize_model(registry, model, feeds, mode="static").stats
    assert (
        "refine" in stats["static"]["kept_float_nodes"]
        and "concatenates" in stats["static"]["kept_float_nodes"]["refine"]
    )
    out = run(model, feeds)
    scores_error = max(np.abs(o[0][:, 4:] - r[0][:, 4:]).max() for o, r in zip(out, reference))
    assert scores_error < 0.02  # class scores (0-1) survive next to box coordinates (0-320)


def test_static_keeps_a_softmax_without_a_calibrated_range_float(registry):
    """ONNX cannot type a contrib op's output, so the calibrator records no range for the Softmax after it
    (zoo swift_f0); onnxruntime's quantizer failed on it, and auto lost the static candidate."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("MatMul", ["x", "W1"], ["h"], name="mm1"),
        helper.make_node("Gelu", ["h"], ["g"], name="gelu", domain="com.microsoft"),
        helper.make_node("Softmax", ["g"], ["p"], name="softmax", axis=-1),
        helper.make_node("MatMul", ["p", "W2"], ["y"], name="mm2"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 16])],
        [numpy_helper.from_array(rng.standard_normal((16, 16)).astype(np.float32), name) for name in ("W1", "W2")],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    )
    model.ir_version = 8
    feeds = [{"x": rng.standard_normal((4, 16)).astype(np.float32)} for _ in range(8)]
    reference = run(model, feeds)
    stats = quantize_model(registry, model, feeds, mode="static", min_size=0).stats
    assert "no calibrated range" in stats["static"]["kept_float_nodes"]["softmax"]
    assert any(n.op_type == "QuantizeLinear" for n in model.graph.node)
    assert cosine(reference, run(model, feeds)) > 0.99


def test_static_attention_mask_is_not_quantized(registry):
    model = rg.attention_with_mask()
    rng = np.random.default_rng(0)
    feeds = [
        {
            "input": rng.standard_normal((2, 8, 16)).astype(np.float32),
            "mask": (rng.random((2, 8)) > 0.3).astype(np.float32),
        }
        for _ in range(8)
    ]
    reference = run(model, feeds)
    stats = quantize_model(registry, model, feeds, mode="static").stats
    kept = stats["static"]["kept_float_nodes"]
    assert {"mask_bias", "mask_bias_3d", "apply_mask", "softmax"} <= set(kept)
    assert "-1.7e+38" in kept["apply_mask"]
    quantized_inputs = {n.input[0] for n in model.graph.node if n.op_type == "QuantizeLinear"}
    assert not quantized_inputs & {"bias", "bias3", "masked"}
    assert "probs" in quantized_inputs  # softmax output, 0..1: safe, quantized like onnxruntime does
    assert cosine(reference, run(model, feeds)) > 0.995


def test_static_needs_data_and_leaves_no_files(registry, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = rg.mlp()
    with pytest.raises(UsageError, match="needs calibration data"):
        quantize_model(registry, model, None, mode="static")
    quantize_model(registry, model, feeds_for(model), mode="static", calibration="entropy")
    assert os.listdir(tmp_path) == []
    assert os.getcwd() == str(tmp_path)


def test_static_reaches_subgraph_weights_with_storage(registry):
    model = rg.if_subgraph()
    stats = quantize_model(registry, model, feeds_for(model), mode="static", min_size=0).stats
    by_name = {item["tensor"]: item for item in stats["quantized"]}
    assert by_name["W_inner"]["form"] == "storage" and "If/Loop branch" in by_name["W_inner"]["note"]
    assert any(item["form"] == "qdq" for item in stats["quantized"])


def test_awkward_locations_are_reported(registry):
    model = rg.constant_node_weights()
    stats = quantize_model(registry, model, feeds_for(model), mode="storage", min_size=0).stats
    assert {item["source"] for item in stats["quantized"]} == {"constant"}
    assert not any(n.op_type == "Constant" and n.output[0] in ("W1", "W2") for n in model.graph.node)

    model = rg.loop_subgraph()
    stats = quantize_model(registry, model, feeds_for(model), mode="storage", min_size=0).stats
    assert {item["tensor"]: item["in_subgraph"] for item in stats["quantized"]} == {"W_outer": False, "W_body": True}

    model = rg.fp16_mlp()
    stats = quantize_model(registry, model, feeds_for(model), mode="weights", min_size=0).stats
    assert all(
        item["form"] == "storage" and item["dtype"] == "float16" and "not float32" in item["note"]
        for item in stats["quantized"]
    )

    model = rg.initializer_as_input()
    before = model.SerializeToString()
    stats = quantize_model(registry, model, feeds_for(model), mode="storage", min_size=0, input_weights="float").stats
    assert stats["quantized_tensors"] == 0 and "graph input" in stats["left"][0]["reason"]
    assert model.SerializeToString() == before
    # by default, when every initializer is also an input (older exporters' layout), they are constants
    stats = quantize_model(registry, model, feeds_for(model), mode="storage", min_size=0).stats
    assert stats["quantized_tensors"] == 1 and stats["input_weights_made_constant"] == 1
    assert [i.name for i in model.graph.input] == ["input"]


def test_custom_domain_ops_are_left_and_said_so(registry):
    model = rg.contrib_op_weight()
    stats = quantize_model(registry, model, feeds_for(model), mode="storage", min_size=0).stats
    assert [item["tensor"] for item in stats["quantized"]] == ["W1"]
    [left] = stats["left"]
    assert (
        left["node"] == "fused"
        and left["tensors"] == ["W2"]
        and "custom-domain op com.microsoft::FusedMatMul" in left["reason"]
    )
    assert any(t.name == "W2" and t.data_type == TensorProto.FLOAT for t in model.graph.initializer)


@pytest.mark.parametrize("mode", ["storage", "auto"])
def test_an_already_quantized_model_is_left_unchanged(registry, mode):
    model = rg.qdq_quantized()
    before = model.SerializeToString(deterministic=True)
    result = quantize_model(registry, model, feeds_for(model), mode=mode)
    assert model.SerializeToString(deterministic=True) == before
    assert result.stats["already_quantized"] == ["DequantizeLinear node 'dequantize'"]
    assert "already quantized" in result.warnings[0]
    # our own output counts as quantized too, 8-bit or packed sub-byte: a second run changes nothing
    for bits in (8, 4):
        model = rg.mlp()
        quantize_model(registry, model, mode="storage", bits=bits, min_size=0)
        again = model.SerializeToString(deterministic=True)
        stats = quantize_model(registry, model, mode="storage", min_size=0).stats
        assert model.SerializeToString(deterministic=True) == again
        assert len(stats["already_quantized"]) == 2 and "cast to float" in stats["already_quantized"][0]


def test_exclude_by_node_op_type_and_weight(registry):
    model = rg.conv_bn_residual()
    stats = quantize_model(registry, model, mode="storage", min_size=0, exclude="[fc,block.conv2.weight]").stats
    assert sorted(item["tensor"] for item in stats["quantized"]) == ["block.conv1.weight", "stem.weight"]
    assert {item["tensor"]: item["reason"] for item in stats["left"]} == {
        "block.conv2.weight": "excluded (exclude=)",
        "fc.weight": "excluded (exclude=)",
    }
    assert {t.name for t in model.graph.initializer} >= {"fc.weight", "block.conv2.weight"}

    model = rg.conv_bn_residual()
    stats = quantize_model(registry, model, mode="storage", min_size=0, exclude="[Conv]").stats
    assert [item["tensor"] for item in stats["quantized"]] == ["fc.weight"]

    model = rg.shared_weight()  # one reader of a shared weight excluded: the other reads a quantized copy
    stats = quantize_model(registry, model, mode="storage", exclude="[mm2]").stats
    [item] = stats["quantized"]
    assert item["layers"] == ["mm1"] and "mm2" in item["note"]
    assert next(n for n in model.graph.node if n.name == "mm2").input[1] == "W"


def test_unknown_exclude_is_a_usage_error(registry):
    with pytest.raises(UsageError, match="plugin 'int_quant': exclude entry 'nope'"):
        quantize_model(registry, rg.mlp(), mode="storage", exclude="[nope]")


@pytest.mark.parametrize(
    "options,message",
    [
        ({"mode": "dynamic", "bits": "4"}, "int8 only"),
        ({"mode": "storage", "calibration": "entropy"}, "only applies to mode=static"),
        (
            {"mode": "static", "percentile": "99.9"},
            "'percentile' only applies to .*calibration=percentile \\(calibration=minmax\\)",
        ),
        ({"mode": "static", "block_size": "32"}, "block_size does not apply"),
        ({"bits": "4", "per_channel": "false", "block_size": "32"}, "not both"),
        (
            {"mode": "storage", "dq_conv": "true"},
            "option 'dq_conv' only applies to mode=weights or auto \\(mode=storage\\)",
        ),
        (
            {"mode": "dynamic", "weights_format": "dequantize_linear"},
            "option 'weights_format' only applies to mode=weights",
        ),
        (
            {"mode": "weights", "weights_format": "dequantize_linear", "accuracy_level": "4"},
            "option 'accuracy_level' only applies to mode=weights or auto and weights_format=matmulnbits",
        ),
        ({"mode": "storage", "target_cosine": "0.9"}, "needs sensitivity=true"),
        ({"mode": "weights", "latency_tolerance": "0.1"}, "only applies to mode=auto"),
        ({"bits": "3"}, "must be one of 8, 4, 2"),
        ({"op_types": "[Conv,Add]"}, "must be one of"),
        ({"block_size": "1"}, "block_size=1"),
    ],
)
def test_option_rules(registry, options, message):
    with pytest.raises(UsageError, match=message):
        prepare_steps([PluginSpec("int_quant", options)], registry)


def test_sensitivity_keeps_the_most_sensitive_layers_float(registry):
    model = rg.conv_bn_residual(channels=16)
    feeds = feeds_for(model)
    reference = run(model, feeds)
    stats = quantize_model(
        registry, model, feeds, mode="storage", bits=2, block_size=0, sensitivity="true", target_cosine=0.97, min_size=0
    ).stats
    table = stats["sensitivity"]["layers"]
    assert sorted(row["layer"] for row in table) == ["block.conv1", "block.conv2", "fc", "stem"]
    assert [row["sensitivity"] for row in table] == sorted((row["sensitivity"] for row in table), reverse=True)
    kept = stats["sensitivity"]["kept_float"]
    assert kept == [row["layer"] for row in table[: len(kept)]]  # the most sensitive first
    assert 0 < len(kept) < 4  # 2-bit everywhere misses 0.97; some layers stay quantized
    # judged on the feeds held back from ranking (every other one), by the worst per-feed cosine
    held_back = feeds[1::2]
    after = run(model, held_back)
    worst = min(cosine([r], [a]) for r, a in zip(reference[1::2], after))
    assert worst >= 0.97 and stats["sensitivity"]["cosine"] == pytest.approx(worst, abs=1e-6)
    left = {item["tensor"]: item["reason"] for item in stats["left"]}
    assert len(left) == len(kept)
    for reason in left.values():  # each names the criterion, the value reached and the target
        assert reason.startswith(
            "kept float by the sensitivity search: quantized alone it gives a worst per-feed cosine of "
        )
        assert "to reach 0.97 (reached " in reason


def test_sensitivity_ranks_layers_on_the_first_few_calibration_feeds(registry):
    """Each layer's row is measured on the first RANKING_FEEDS fit feeds only: a layer alone, on those feeds."""
    from onnxshrink_plugins.quant.sensitivity import RANKING_FEEDS

    model = rg.conv_bn_residual(channels=16)
    feeds = feeds_for(model, count=4 * RANKING_FEEDS)
    ranking = feeds[0::2][:RANKING_FEEDS]  # int_quant fits on every other feed and holds the rest back
    options = {"mode": "storage", "bits": 2, "block_size": 0, "min_size": 0}
    table = quantize_model(registry, rg.conv_bn_residual(channels=16), feeds, sensitivity="true", **options).stats
    layers = ["block.conv1", "block.conv2", "fc", "stem"]
    sizes = {t.name: t.dims for t in model.graph.initializer}
    weight_of = {n.name: n.input[1] for n in model.graph.node if n.op_type in ("Conv", "Gemm", "MatMul")}
    for row in table["sensitivity"]["layers"]:
        assert row["weights"] == int(np.prod(sizes[weight_of[row["layer"]]]))  # what a tier choice weighs
        alone = rg.conv_bn_residual(channels=16)
        quantize_model(
            registry, alone, feeds, exclude="[" + ",".join(x for x in layers if x != row["layer"]) + "]", **options
        )
        worst = min(cosine([r], [a]) for r, a in zip(run(model, ranking), run(alone, ranking)))
        assert row["cosine"] == pytest.approx(worst, abs=1e-6), row["layer"]


def test_sensitivity_in_static_mode(registry):
    model = rg.conv_bn_residual(channels=16)
    feeds = feeds_for(model)
    stats = quantize_model(registry, model, feeds, mode="static", sensitivity="true", target_cosine=0.99999).stats
    assert {row["op_type"] for row in stats["sensitivity"]["layers"]} == {"Conv", "Gemm"}
    assert stats["sensitivity"]["met_target"]


def test_auto_reports_what_it_tried_and_keeps_a_qualifying_winner(registry):
    model = rg.conv_bn_residual(channels=16)
    feeds = feeds_for(model)
    float_bytes = model.ByteSize()
    stats = quantize_model(registry, model, feeds, min_size=0).stats
    report = stats["auto"]
    modes = ["storage", "weights", "dynamic", "static"]
    assert [row["mode"] for row in report["tried"]][:4] == modes  # (mixed-precision rows follow only when none is good)
    winner = next(row for row in report["tried"] if row["mode"] == report["winner"])
    assert winner["verdict"] == "meets the target" and winner["cosine"] >= 0.995
    assert winner["latency_ratio"] <= 1.05
    assert model.ByteSize() == winner["bytes"] < float_bytes
    qualifying = [row for row in report["tried"] if row["verdict"] == "meets the target"]
    assert winner["bytes"] <= min(row["bytes"] for row in qualifying) * 1.02
    for row in qualifying:  # a simpler form of about the same size loses only to a clearly faster one
        if row["bytes"] <= min(r["bytes"] for r in qualifying) * 1.02 and modes.index(row["mode"]) < modes.index(
            winner["mode"]
        ):
            assert winner["latency_ratio"] < row["latency_ratio"] - 0.05
    assert stats["mode"] == report["winner"] and report["why"].startswith(f"mode={report['winner']}")


def test_auto_without_data_skips_static_and_warns(registry):
    model = rg.mlp()
    result = quantize_model(registry, model, None, min_size=0)
    tried = {row["mode"]: row for row in result.stats["auto"]["tried"]}
    assert tried["static"]["verdict"] == "skipped: no calibration data (--data)"
    assert any("random inputs" in w for w in result.warnings)
    # the pipeline's synthetic inputs (no --data) do not calibrate static ranges either
    steps = prepare_steps([PluginSpec("int_quant", {"min_size": "0"})], registry)
    feeds = feeds_for(model)
    [result] = run_steps(rg.mlp(), steps, seed=0, calibration=lambda: feeds, calibration_is_synthetic=True)
    assert {row["mode"]: row for row in result.stats["auto"]["tried"]}["static"]["verdict"].startswith("skipped")


def test_auto_leaves_the_model_float_when_nothing_meets_the_target(registry):
    model = rg.mlp()
    before = model.SerializeToString(deterministic=True)
    # only the float model itself reaches cosine 1: every form, then every mixed precision, misses
    result = quantize_model(registry, model, feeds_for(model), bits=2, block_size=0, target_cosine=1.0, min_size=0)
    assert result.stats["auto"]["winner"] is None and result.stats["mode"] is None
    assert model.SerializeToString(deterministic=True) == before
    tried = [row["mode"] for row in result.stats["auto"]["tried"]]
    assert tried[-4:] == [
        "storage+sensitivity(int8)",
        "storage+sensitivity(float16+int8)",
        "storage+sensitivity(float16)",
        "storage+sensitivity(float)",
    ]
    [warning] = [w for w in result.warnings if "left float" in w]
    assert "storage: worst per-feed cosine 0." in warning and "< target 1.0" in warning  # criterion, value, target
    assert "not smaller" in warning  # every layer kept float: the float model


def test_auto_low_bits_keeps_sensitive_layers_wider_rather_than_float(registry):
    """bits=2 misses the target everywhere; auto keeps the most sensitive layers at int8 and says why."""
    model = rg.conv_bn_residual(channels=16)
    float_bytes = model.ByteSize()
    feeds = feeds_for(model)
    reference = run(model, feeds)
    # latency_tolerance=1: the choice here is about fidelity, not about a timing on a busy machine
    stats = quantize_model(
        registry, model, feeds, bits=2, block_size=0, target_cosine=0.99, latency_tolerance=1.0, min_size=0
    ).stats
    report = stats["auto"]
    winner = next(row for row in report["tried"] if row["mode"] == report["winner"])
    assert report["winner"] == "storage+sensitivity(int8)" and stats["mode"] == "storage"
    assert 0 < len(winner["kept_wider"]) < 4 and "kept at int8" in report["why"]
    assert model.ByteSize() == winner["bytes"] < float_bytes
    schemes = {item["layers"][0]: item["scheme"] for item in stats["quantized"]}
    assert {schemes[layer] for layer in winner["kept_wider"]} == {"int8 symmetric per-channel(axis=0)"}
    assert any(s.startswith("int2") for s in schemes.values())
    wider = [item for item in stats["quantized"] if item.get("kept_wider")]
    assert all(item["note"].startswith("kept at int8 by the sensitivity search") for item in wider)
    assert min(cosine([r], [a]) for r, a in zip(reference, run(model, feeds))) >= 0.99
    rejected = [row for row in report["tried"] if row.get("verdict", "").startswith("fidelity")]
    assert rejected and all(row["latency_ratio"] is None and "not timed" in row["latency_note"] for row in rejected)
    assert winner["latency_ratio"] > 0  # only a candidate that could win is timed


def test_auto_low_bits_keeps_the_most_sensitive_at_float16_and_the_next_at_int8(registry):
    """When every layer at int8 still misses the target, the fewest most sensitive go float16, then the
    fewest next ones stay int8 and the rest take the low bits (zoo centerface: 0.24x at 4 bits)."""
    model = rg.conv_bn_residual(channels=16)
    feeds = feeds_for(model, count=16)
    reference = run(model, feeds)
    target = 0.99999
    stats = quantize_model(
        registry, model, feeds, bits=2, block_size=0, target_cosine=target, latency_tolerance=1.0, min_size=0
    ).stats
    report = stats["auto"]
    tried = {row["mode"]: row for row in report["tried"]}
    assert tried["storage+sensitivity(int8)"]["verdict"].startswith("fidelity")  # every layer at int8 misses
    assert report["winner"] == "storage+sensitivity(float16+int8)" and stats["mode"] == "storage"
    row = tried[report["winner"]]
    top, middle = row["tiers"]["float16"], row["tiers"]["int8"]
    assert top and not set(top) & set(middle) and row["kept_wider"] == top + middle
    schemes = {item["layers"][0]: item["scheme"] for item in stats["quantized"]}
    assert {schemes[layer].split()[0] for layer in top} == {"float16"}
    assert {schemes[layer].split()[0] for layer in middle} <= {"int8"}
    assert all(schemes[layer].startswith("int2") for layer in schemes if layer not in top + middle)
    # the fewest: one float16 layer fewer (the rest int8), or one int8 layer fewer, misses the target
    searched = {(s["kept_top"], s["kept_middle"]): s["cosine"] for s in row["searched"]}
    assert searched[(len(top) - 1, 4 - len(top) + 1)] < target
    if middle:
        assert searched[(len(top), len(middle) - 1)] < target
    assert min(cosine([r], [a]) for r, a in zip(reference, run(model, feeds))) >= target - 1e-6
    assert "float16" in report["why"] and "at int8" in report["why"]


@pytest.mark.parametrize("mode", ["storage", "weights", "dynamic", "static"])
def test_same_options_same_bytes(registry, mode):
    a, b = rg.conv_bn_residual(), rg.conv_bn_residual()
    feeds = feeds_for(a)
    quantize_model(registry, a, feeds, mode=mode, bits=8, min_size=0)
    quantize_model(registry, b, feeds, mode=mode, bits=8, min_size=0)
    assert a.SerializeToString(deterministic=True) == b.SerializeToString(deterministic=True)


def test_cli_storage_run(cli, write_model, tmp_path):
    pytest.importorskip("onnxshrink.validate")  # the shrink command measures sizes with it
    path = write_model("conv_bn_residual")
    out = tmp_path / "small.onnx"
    result = cli(path, "--plugin", "int_quant:mode=storage,min_size=0", "-o", out, "--report", tmp_path / "r.json")
    assert result.exit_code == 0, result
    assert out.stat().st_size < path.stat().st_size
    import json

    step = json.loads((tmp_path / "r.json").read_text())["steps"][0]
    assert step["plugin"] == "int_quant" and step["stats"]["quantized_tensors"] == 4
    bad = cli(path, "--plugin", "int_quant:mode=static,bits=4", "-o", tmp_path / "x.onnx")
    assert bad.exit_code == 2 and "int8 only" in bad.stderr and "Traceback" not in bad.stderr


def test_embedding_tables_by_default(registry):
    table = np.random.default_rng(0).standard_normal((50, 8)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["emb", "ids"], ["out"], name="lookup")],
        "g",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["n"])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["n", 8])],
        [numpy_helper.from_array(table, "emb")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    left = onnx.ModelProto()
    left.CopyFrom(model)
    assert quantize_model(registry, left, mode="storage", embeddings="false").stats["quantized_tensors"] == 0
    stats = quantize_model(registry, model, mode="storage").stats
    [item] = stats["quantized"]
    assert item["tensor"] == "emb" and item["scheme"] == "int8 symmetric per-channel(axis=0)"  # one scale per row
    ids = np.array([0, 7, 49], np.int64)
    expected = onnxshrink.quantize(table, 8, axis=0).dequantize()[ids]
    np.testing.assert_array_equal(run(model, [{"ids": ids}])[0][0], expected)


def test_auto_prefer_speed_picks_the_fastest_good_candidate(registry):
    model = rg.conv_bn_residual(channels=16)
    stats = quantize_model(registry, model, feeds_for(model), prefer="speed", min_size=0).stats
    good = [row for row in stats["auto"]["tried"] if row["verdict"] == "meets the target"]
    winner = next(row for row in good if row["mode"] == stats["auto"]["winner"])
    assert winner["latency_ratio"] <= min(row["latency_ratio"] for row in good) + 0.05
    assert "prefer=speed" in stats["auto"]["why"]


def test_static_calibration_prints_nothing(registry, capfd):
    model = rg.conv_bn_residual()
    capfd.readouterr()
    quantize_model(registry, model, feeds_for(model), mode="static", calibration="percentile")
    out, err = capfd.readouterr()
    assert out == "" and err == ""
