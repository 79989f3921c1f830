"""Low-bit and sparse storage: bit packing against numpy, decode chains folded by onnxruntime, sparse_store."""

from __future__ import annotations

import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxshrink
from onnxshrink import QuantizedTensor, pack_codes, quantize, unpack_codes, weight_chain
from onnxshrink.plugin.method import PluginSpec
from onnxshrink.run.pipeline import prepare_steps, run_steps
from onnxshrink.testing import reference_graphs as rg
from tests.support.files import ROOT as REPO_ROOT

ROOT = str(REPO_ROOT)
SHAPE = (37, 11)  # 407 elements: never a multiple of 8, so padding is always trimmed


def stream_reference(packed: np.ndarray, bits: int, count: int) -> list[int]:
    """Codes read back from the bytes as one little-endian integer (independent of numpy's bit helpers)."""
    whole = int.from_bytes(bytes(packed), "little")
    return [(whole >> (i * bits)) & (2**bits - 1) for i in range(count)]


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("count", [1, 8, 13, 64, 407])
def test_pack_round_trip_every_width(bits, count):
    codes = np.random.default_rng(bits * 100 + count).integers(0, 2**bits, size=count).astype(np.uint8)
    packed = pack_codes(codes, bits)
    assert (
        packed.dtype == np.uint8 and packed.size == -(-count // 8) * bits
    )  # exactly `bits` bits per code, 8-code groups
    assert stream_reference(packed, bits, count) == codes.tolist()
    np.testing.assert_array_equal(unpack_codes(packed, bits, count), codes)
    if 8 % bits == 0:  # the same layout as onnxshrink.pack_bits (ONNX int4 order) for widths that divide 8
        np.testing.assert_array_equal(packed[: -(-count * bits // 8)], onnxshrink.pack_bits(codes, bits))


def test_pack_rejects_codes_out_of_range():
    with pytest.raises(ValueError, match=r"\[0, 7\]"):
        pack_codes(np.array([8]), 3)


def first_output(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feed)[0]


def matmul_model(nodes, inits, shape=SHAPE, opset=17, dtype=TensorProto.FLOAT) -> onnx.ModelProto:
    graph = helper.make_graph(
        [*nodes, helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", dtype, ["n", shape[0]])],
        [helper.make_tensor_value_info("y", dtype, ["n", shape[1]])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def optimized(model: onnx.ModelProto, tmp_path) -> tuple[ort.InferenceSession, onnx.ModelProto]:
    """A CPU session with default optimizations and the graph it runs (saved by onnxruntime)."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session, onnx.load(options.optimized_model_filepath)


def assert_folded_and_exact(model, dense: np.ndarray, tmp_path, x: np.ndarray) -> None:
    """onnxruntime folds the chain into one initializer equal to ``dense``; outputs equal the dense model's."""
    session, graph = optimized(model, tmp_path)
    assert [n.op_type for n in graph.graph.node] == ["MatMul"]
    [folded] = [numpy_helper.to_array(t) for t in graph.graph.initializer if t.name == "w"]
    assert folded.dtype == dense.dtype
    np.testing.assert_array_equal(folded, dense)
    dense_model = matmul_model(
        [], [numpy_helper.from_array(dense, "w")], dense.shape, dtype=helper.np_dtype_to_tensor_dtype(dense.dtype)
    )
    expected = ort.InferenceSession(dense_model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x}
    )[0]
    np.testing.assert_array_equal(session.run(None, {"x": x})[0], expected)


GRIDS = [
    pytest.param(dict(axis=None, block_size=None), id="per-tensor"),
    pytest.param(dict(axis=1, block_size=None), id="per-channel"),
    pytest.param(dict(axis=0, block_size=8), id="blocks-uneven"),
    pytest.param(dict(axis=1, block_size=11), id="blocks-even"),
]


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])
@pytest.mark.parametrize("bits", range(2, 9))
def test_packed_chain_folds_to_the_dense_dequantized_weight(bits, symmetric, grid, tmp_path):
    rng = np.random.default_rng(bits)
    qt = quantize(rng.standard_normal(SHAPE).astype(np.float32), bits, symmetric=symmetric, **grid)
    used, nodes, inits = weight_chain(qt, "w", set(), form="packed")
    assert used == "packed"
    assert_folded_and_exact(
        matmul_model(nodes, inits), qt.dequantize(), tmp_path, rng.standard_normal((3, SHAPE[0])).astype(np.float32)
    )
    codes = next(t for t in inits if t.name == "w_packed")  # the codes: `bits` bits per weight, padded to 8 codes
    assert codes.data_type == TensorProto.UINT8 and numpy_helper.to_array(codes).size == -(-qt.values.size // 8) * bits


@pytest.mark.parametrize("bits", [1, 2])
def test_binary_and_ternary_values_fold_exactly(bits, tmp_path):
    rng = np.random.default_rng(7)
    w = rng.standard_normal(SHAPE).astype(np.float32)
    signs = np.where(w >= 0, 1, -1) if bits == 1 else np.sign(w) * (np.abs(w) > 0.5)
    qt = QuantizedTensor(signs.astype(np.int8), np.abs(w).mean(axis=0).astype(np.float32), None, bits, axis=1)
    for form in ("packed", "sparse"):
        _, nodes, inits = weight_chain(qt, "w", set(), form=form)
        assert_folded_and_exact(
            matmul_model(nodes, inits), qt.dequantize(), tmp_path, rng.standard_normal((2, SHAPE[0])).astype(np.float32)
        )


@pytest.mark.parametrize("quantized", [False, True], ids=["float", "int4-asym-blocks"])
def test_sparse_chain_folds_exactly(quantized, tmp_path):
    rng = np.random.default_rng(3)
    w = rng.standard_normal(SHAPE).astype(np.float32)
    w[rng.random(SHAPE) < 0.7] = 0
    values = quantize(w, 4, symmetric=False, axis=0, block_size=8) if quantized else w
    dense = values.dequantize() if quantized else w
    used, nodes, inits = weight_chain(values, "w", set(), form="sparse")
    assert used == "sparse"
    assert_folded_and_exact(
        matmul_model(nodes, inits), dense, tmp_path, rng.standard_normal((2, SHAPE[0])).astype(np.float32)
    )
    stored = sum(onnxshrink.tensor_bytes(t) for t in inits)
    assert stored < dense.nbytes / 2


def test_sparse_storage_shrinks_with_sparsity():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((64, 64)).astype(np.float32)
    order = np.argsort(np.abs(w).ravel(), kind="stable")
    sizes = []
    for sparsity in (0.0, 0.5, 0.7, 0.9, 0.99):
        pruned = w.ravel().copy()
        pruned[order[: int(sparsity * pruned.size)]] = 0
        _, _, inits = weight_chain(pruned.reshape(w.shape), "w", set(), form="sparse")
        sizes.append(sum(onnxshrink.tensor_bytes(t) for t in inits))
    assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == len(sizes)
    n = w.size  # N/8 mask bytes + 4 bytes per non-zero (plus one zero entry and the decode constants)
    assert sizes[3] < n / 8 + 4 * 0.1 * n + 64


def test_smallest_picks_sparse_only_when_it_is_smaller():
    w = np.random.default_rng(1).standard_normal((32, 32)).astype(np.float32)
    assert weight_chain(quantize(w, 4, axis=1), "w", set(), form="smallest")[0] == "packed"
    w[np.abs(w) < 1.5] = 0
    assert weight_chain(quantize(w, 4, axis=1), "w", set(), form="smallest")[0] == "sparse"


def test_opset_11_works_and_opset_10_is_refused(tmp_path):
    rng = np.random.default_rng(2)
    qt = quantize(rng.standard_normal(SHAPE).astype(np.float32), 3, axis=1)
    _, nodes, inits = weight_chain(qt, "w", set(), form="sparse", opset=11)
    assert_folded_and_exact(
        matmul_model(nodes, inits, opset=11),
        qt.dequantize(),
        tmp_path,
        rng.standard_normal((1, SHAPE[0])).astype(np.float32),
    )
    with pytest.raises(ValueError, match="opset 11"):
        weight_chain(qt, "w", set(), form="packed", opset=10)


def test_dequantize_linear_form_runs_at_opset_21(tmp_path):
    rng = np.random.default_rng(4)
    qt = quantize(rng.standard_normal((64, 16)).astype(np.float32), 4, symmetric=False, axis=0, block_size=32)
    with pytest.raises(ValueError, match="opset 21"):
        weight_chain(qt, "w", set(), form="dequantize_linear", opset=17)
    _, nodes, inits = weight_chain(qt, "w", set(), form="dequantize_linear", opset=21)
    assert [n.op_type for n in nodes] == ["DequantizeLinear"] and nodes[0].output[0] == "w"
    assert {t.data_type for t in inits} >= {TensorProto.UINT4}
    model = matmul_model(nodes, inits, (64, 16), opset=21)
    model.ir_version = 10
    options = ort.SessionOptions()
    options.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "0")  # float32 inside the kernel
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    assert [n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node] == [
        "MatMulNBits"
    ]  # fused, not folded
    x = rng.standard_normal((2, 64)).astype(np.float32)
    np.testing.assert_allclose(session.run(None, {"x": x})[0], x @ qt.dequantize(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("builder", [rg.constant_node_weights, rg.if_subgraph, rg.fp16_mlp, rg.shared_weight])
def test_store_weight_wherever_the_weight_lives(builder):
    model = builder()
    feed = {
        i.name: np.random.default_rng(0)
        .standard_normal([2, 16])
        .astype(helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type))
        for i in model.graph.input
    }
    expected_model = builder()
    stored = []
    for weight, twin in zip(onnxshrink.weight_tensors(model), onnxshrink.weight_tensors(expected_model)):
        qt = quantize(weight.array().astype(np.float32), 3, symmetric=False, axis=0, block_size=8)
        twin.set_array(qt.dequantize())
        stored.append(onnxshrink.store_weight(model, weight, qt, form="packed"))
    onnx.checker.check_model(model, full_check=True)
    assert all(s.form == "packed" and 3 < s.bits_per_weight < 16 for s in stored)
    np.testing.assert_array_equal(first_output(model, feed), first_output(expected_model, feed))


def test_conv_weight_stored_as_a_matrix_is_reshaped_back():
    model = rg.conv_bn_residual()
    reference = rg.conv_bn_residual()
    weight = next(w for w in onnxshrink.weight_tensors(model) if w.name == "block.conv1.weight")
    twin = next(w for w in onnxshrink.weight_tensors(reference) if w.name == "block.conv1.weight")
    qt = quantize(weight.array().reshape(8, -1), 4, symmetric=False, axis=1, block_size=16)
    twin.set_array(qt.dequantize().reshape(weight.shape))
    onnxshrink.store_weight(model, weight, qt, form="packed", shape=weight.shape)
    x = {"input": np.random.default_rng(0).standard_normal((2, 1, 8, 8)).astype(np.float32)}
    np.testing.assert_array_equal(first_output(model, x), first_output(reference, x))


def run_plugin(registry, model, name, feeds=None, **options):
    steps = prepare_steps([PluginSpec(name, {k: str(v) for k, v in options.items()})], registry)
    [result] = run_steps(
        model, steps, seed=0, calibration=(lambda: feeds) if feeds else None, calibration_is_synthetic=False
    )
    return result.stats


def test_sparse_store_on_a_pruned_model_shrinks_the_file_with_its_sparsity(registry):
    x = np.load(os.path.join(ROOT, "models", "mlp_eval.npz"))["input"][:64]
    sizes = []
    for sparsity in (0.5, 0.8, 0.95):
        pruned = onnx.load(os.path.join(ROOT, "models", "mlp.onnx"))
        run_plugin(registry, pruned, "weight_prune", sparsity=sparsity)
        stored = onnx.ModelProto()
        stored.CopyFrom(pruned)
        stats = run_plugin(registry, stored, "sparse_store")
        assert stats["stored_tensors"] == 3 and stats["weight_bytes_after"] < stats["weight_bytes_before"]
        sizes.append(stored.ByteSize())
        assert stored.ByteSize() < pruned.ByteSize()
        np.testing.assert_array_equal(first_output(stored, {"input": x}), first_output(pruned, {"input": x}))
    assert sizes[0] > sizes[1] > sizes[2]


def test_sparse_store_with_quantized_values(registry):
    model = onnx.load(os.path.join(ROOT, "models", "mlp.onnx"))
    run_plugin(registry, model, "weight_prune", sparsity=0.8)
    before = model.ByteSize()
    stats = run_plugin(registry, model, "sparse_store", bits=4)
    # 1 mask bit per weight + 4 bits per non-zero (20 %) + one float scale per output channel
    assert stats["stored_tensors"] == 3 and 1.8 <= stats["bits_per_weight"] < 2.2
    assert model.ByteSize() < before / 8  # biases stay float32


def test_sparse_store_leaves_dense_weights(registry):
    model = rg.mlp()
    before = model.SerializeToString()
    stats = run_plugin(registry, model, "sparse_store", min_size=0)
    assert stats["stored_tensors"] == 0 and all("sparsity 0.000" in row["reason"] for row in stats["left"])
    assert model.SerializeToString() == before
