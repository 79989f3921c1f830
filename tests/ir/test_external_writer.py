"""The streamed writer interleaves tensors copied from the input's data file (in the kernel where it
can) with tensors held in memory, in the model's order."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxshrink.ir.external import external_data_dir, write_with_external_data


@pytest.mark.parametrize("changed", [[], [1], [0, 3], [2, 4], [0, 1, 2, 3, 4]])
def test_copied_and_new_tensors_interleave(tmp_path, changed):
    rng = np.random.default_rng(0)
    arrays = [
        rng.standard_normal(s).astype(np.float32) for s in [(300, 500), (100, 100), (7, 70), (100, 1000), (3, 1111)]
    ]
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        [numpy_helper.from_array(a, f"w{i}") for i, a in enumerate(arrays)],
    )
    onnx.save_model(
        helper.make_model(graph),
        str(tmp_path / "m.onnx"),
        save_as_external_data=True,
        location="m.data",
        size_threshold=0,
    )
    model = onnx.load(str(tmp_path / "m.onnx"), load_external_data=False)
    expected = list(arrays)
    for i in changed:
        expected[i] = arrays[i] * 2 + 1
        model.graph.initializer[i].CopyFrom(numpy_helper.from_array(expected[i], f"w{i}"))
    (tmp_path / "out").mkdir()
    with external_data_dir(tmp_path):
        write_with_external_data(model, tmp_path / "out" / "o.onnx", "o.onnx.data")
    written = onnx.load(str(tmp_path / "out" / "o.onnx"))
    for tensor, values in zip(written.graph.initializer, expected):
        np.testing.assert_array_equal(numpy_helper.to_array(tensor), values)
    assert (tmp_path / "out" / "o.onnx.data").stat().st_size == sum(a.nbytes for a in arrays)
