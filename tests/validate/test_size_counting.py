"""measure_size counts non-zeros of external tensors from their bits (same counts as numpy on the
values) and measures an unchanged file only once."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxshrink.validate.size import measure_size


def save(path, arrays):
    inits = [numpy_helper.from_array(a, f"w{i}") for i, a in enumerate(arrays)]
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save_model(model, str(path), save_as_external_data=True, location="m.data", size_threshold=0)


def test_external_counts_match_numpy(tmp_path):
    special = [0.0, -0.0, np.nan, -np.nan, np.inf, -np.inf, 1e-45, 1.0]
    arrays = [np.array(special * 4, dtype) for dtype in (np.float32, np.float16, np.float64)]
    arrays += [np.array([0, 1, -1, 0, 5], np.int64), np.array([True, False, True]), np.array([0, 3], np.int8)]
    big = np.random.default_rng(0).choice(np.array(special, np.float32), 700_001)  # read in several pieces
    arrays += [big, big.astype(np.float64)]
    save(tmp_path / "m.onnx", arrays)
    size = measure_size(tmp_path / "m.onnx")
    assert size["nonzeros"] == sum(int(np.count_nonzero(a)) for a in arrays)
    assert size["params"] == sum(a.size for a in arrays)


def test_unchanged_file_is_measured_once_and_a_changed_one_again(tmp_path, monkeypatch):
    save(tmp_path / "m.onnx", [np.ones(8, np.float32)])
    first = measure_size(tmp_path / "m.onnx")
    first["params"] = -1  # callers get copies
    from onnxshrink.validate import size as size_module

    reads = []
    monkeypatch.setattr(size_module, "_count_external", lambda *a: reads.append(a) or 0)
    assert measure_size(tmp_path / "m.onnx")["nonzeros"] == 8 and not reads
    save(tmp_path / "m.onnx", [np.zeros(8, np.float32)])
    assert measure_size(tmp_path / "m.onnx")["nonzeros"] == 0 and reads
