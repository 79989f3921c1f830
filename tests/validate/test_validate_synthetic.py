"""Synthetic inputs that run (issue 15, item 1): graphs built here reproduce what made real models fail
with naive random inputs (dynamic dims set to 1, integers drawn from [0, 4)), and each one must now run
in onnxruntime, with the choice said in the data warnings; when nothing runs, one line names the input
and suggests --input-shape or --data."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidArgument

from onnxshrink.errors import UsageError
from onnxshrink.validate.data import load_feeds
from tests.support.cli import assert_one_line_error
from tests.support.files import save, snapshot

OPSET = [helper.make_opsetid("", 17)]


def _model(nodes, inputs, outputs, initializers=()) -> onnx.ModelProto:
    model = helper.make_model(helper.make_graph(nodes, "g", inputs, outputs, list(initializers)), opset_imports=OPSET)
    onnx.checker.check_model(model, full_check=True)
    return model


def embeddings() -> onnx.ModelProto:
    """BERT-style: word ids into a 100-row table, token types into a 2-row table, an int64 attention mask into Where."""
    rng = np.random.default_rng(0)
    return _model(
        [
            helper.make_node("Gather", ["words", "input_ids"], ["w"]),
            helper.make_node("Gather", ["types", "token_type_ids"], ["t"]),
            helper.make_node("Add", ["w", "t"], ["e"]),
            helper.make_node("Cast", ["attention_mask"], ["keep"], to=TensorProto.BOOL),
            helper.make_node("Unsqueeze", ["keep", "last"], ["keep3"]),
            helper.make_node("Where", ["keep3", "e", "zero"], ["y"]),
        ],
        [
            helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "seq"])
            for n in ("input_ids", "token_type_ids", "attention_mask")
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", 8])],
        [
            numpy_helper.from_array(rng.standard_normal((100, 8)).astype(np.float32), "words"),
            numpy_helper.from_array(rng.standard_normal((2, 8)).astype(np.float32), "types"),
            numpy_helper.from_array(np.array([-1], np.int64), "last"),
            numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
        ],
    )


def reflect_pad(pad: int = 20) -> onnx.ModelProto:
    """A reflect Pad of ``pad`` on the time axis: the input needs more than ``pad`` samples."""
    return _model(
        [helper.make_node("Pad", ["x", "pads"], ["y"], mode="reflect")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, "L"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, None])],
        [numpy_helper.from_array(np.array([0, 0, pad, 0, 0, pad], np.int64), "pads")],
    )


def detector(stride_log2: int = 6) -> onnx.ModelProto:
    """Pool down by 2**stride_log2, upsample back and Concat with the input: H and W must be multiples of the stride."""
    nodes, current = [], "image"
    for i in range(stride_log2):
        nodes.append(helper.make_node("MaxPool", [current], [f"p{i}"], kernel_shape=[2, 2], strides=[2, 2]))
        current = f"p{i}"
    factor = float(2**stride_log2)
    nodes += [
        helper.make_node("Resize", [current, "", "scales"], ["up"], mode="nearest"),
        helper.make_node("Concat", ["image", "up"], ["y"], axis=1),
    ]
    return _model(
        nodes,
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 6, "H", "W"])],
        [numpy_helper.from_array(np.array([1, 1, factor, factor], np.float32), "scales")],
    )


def fixed_by_matmul() -> onnx.ModelProto:
    """x [n, k] times a constant [37, 5]: k can only be 37. ``bias`` [n, 5] shares the symbol n."""
    return _model(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Add", ["h", "bias"], ["y"])],
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", "k"]),
            helper.make_tensor_value_info("bias", TensorProto.FLOAT, ["n", 5]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 5])],
        [numpy_helper.from_array(np.ones((37, 5), np.float32), "w")],
    )


def needs_exact_size() -> onnx.ModelProto:
    """Reshape to [10, 100]: only 1000 samples run, a size no search tries."""
    return _model(
        [helper.make_node("Reshape", ["x", "shape"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "samples"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [10, 100])],
        [numpy_helper.from_array(np.array([10, 100], np.int64), "shape")],
    )


def runs(model: onnx.ModelProto, feeds) -> None:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for feed in feeds:
        session.run(None, feed)


def naive_feed(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """What synthetic inputs used to be: dynamic dims 1, integers in [0, 4)."""
    rng = np.random.default_rng(0)
    feed = {}
    for vi in model.graph.input:
        t = vi.type.tensor_type
        shape = [d.dim_value or 1 for d in t.shape.dim]
        dtype = helper.tensor_dtype_to_np_dtype(t.elem_type)
        feed[vi.name] = (
            rng.integers(0, 4, shape).astype(dtype)
            if np.issubdtype(dtype, np.integer)
            else rng.standard_normal(shape).astype(dtype)
        )
    return feed


@pytest.mark.parametrize("build", [embeddings, reflect_pad, detector, fixed_by_matmul])
def test_naive_inputs_fail_and_chosen_ones_run(build):
    model = build()
    with pytest.raises((InvalidArgument, Fail)):  # the failure the issue reports, so the cases below test something
        runs(model, [naive_feed(model)])
    data = load_feeds(None, model)
    assert data.synthetic and len(data.feeds) == 8
    runs(model, data.feeds)
    assert any(w.startswith("dynamic dims chosen") for w in data.warnings), data.warnings


def test_indices_stay_in_their_table_and_masks_are_ones():
    data = load_feeds(None, embeddings(), seed=1)
    ids = np.concatenate([f["input_ids"].ravel() for f in data.feeds])
    types = np.concatenate([f["token_type_ids"].ravel() for f in data.feeds])
    assert ids.min() >= 0 and ids.max() < 100 and len(np.unique(ids)) > 4  # the whole table, not [0, 4)
    assert set(np.unique(types)) <= {0, 1}
    assert all((f["attention_mask"] == 1).all() for f in data.feeds)
    notes = " | ".join(data.warnings)
    assert "'token_type_ids': integers in [0, 2) (indices of Gather" in notes
    assert "'attention_mask': all ones (a mask)" in notes


def test_search_reports_the_size_that_ran():
    data = load_feeds(None, reflect_pad(20))
    assert data.feeds[0]["x"].shape == (1, 1, 32)  # 8 and 16 are too short for a reflect pad of 20
    assert "searched L=32 (onnxruntime ran the model on try 3)" in " | ".join(data.warnings)
    image = load_feeds(None, detector(6)).feeds[0]["image"]
    assert image.shape == (1, 3, 256, 256)  # 224 is not a multiple of 64


def test_dims_fixed_by_a_consumer_and_shared_symbols():
    data = load_feeds(None, fixed_by_matmul())
    assert data.feeds[0]["x"].shape == (1, 37) and data.feeds[0]["bias"].shape == (1, 5)
    assert "x dim 1 = 37 (fixed by MatMul" in " | ".join(data.warnings)
    given = load_feeds(None, fixed_by_matmul(), input_shapes={"x": (3, 37)}).feeds[0]
    assert given["bias"].shape == (3, 5)  # n is 3 everywhere once one input fixes it


def test_same_seed_same_inputs():
    a, b = load_feeds(None, embeddings(), seed=5), load_feeds(None, embeddings(), seed=5)
    assert all(np.array_equal(x[k], y[k]) for x, y in zip(a.feeds, b.feeds) for k in x)


def test_nothing_runs_names_the_input_and_the_way_out():
    with pytest.raises(UsageError) as info:
        load_feeds(None, needs_exact_size())
    message = str(info.value)
    assert "input 'samples'" not in message and "input 'x' [1, ?]" in message
    assert "--input-shape x=" in message and "--data" in message and "Reshape" in message and "\n" not in message


def test_cli_without_data_runs_where_it_used_to_fail(cli, tmp_path):
    model = save(detector(6), tmp_path / "det.onnx")
    result = cli(
        model,
        "--plugin",
        "weight_prune",
        "-o",
        tmp_path / "out.onnx",
        "--repeats",
        "2",
        "--report",
        tmp_path / "r.json",
    )
    assert result.exit_code == 0, result
    assert "synthetic inputs: dynamic dims chosen: batch N=1; searched H=256, W=256" in result.stderr
    warnings = json.loads((tmp_path / "r.json").read_text())["validation"]["data"]["warnings"]
    assert any("H=256" in w for w in warnings)


def test_cli_nothing_runs_is_exit_2_then_input_shape_fixes_it(cli, tmp_path):
    model = save(needs_exact_size(), tmp_path / "m.onnx")
    before = snapshot(tmp_path)
    result = cli(model, "--plugin", "weight_prune", "-o", tmp_path / "out.onnx")
    assert_one_line_error(result, 2, "input 'x'", "--input-shape x=", "--data")
    assert snapshot(tmp_path) == before
    fixed = cli(
        model, "--plugin", "weight_prune", "-o", tmp_path / "out.onnx", "--input-shape", "x=1x1000", "--repeats", "2"
    )
    assert fixed.exit_code == 0, fixed
