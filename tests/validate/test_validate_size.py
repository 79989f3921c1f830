"""Size: file bytes with external data, params/nonzeros through Constant nodes and If subgraphs."""

from __future__ import annotations

import zlib

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxshrink.errors import InvalidModelError
from onnxshrink.validate.size import compare_size, measure_size
from tests.support.files import save, save_external
from tests.support.graphs import classifier, with_constant_and_if


def test_external_data_counted_once_and_compressed(tmp_path):
    m = classifier(seed=1)
    path = save_external(m, tmp_path / "m.onnx")
    weights = tmp_path / "weights.bin"
    s = measure_size(path)
    assert s["external_files"] == ["weights.bin"]
    assert s["file_bytes"] == path.stat().st_size + weights.stat().st_size
    assert s["params"] == 12 + 3 and s["nonzeros"] == 15
    expected = zlib.compress(path.read_bytes() + weights.read_bytes(), 1)
    assert s["compressed_bytes"] == len(expected)
    inline = measure_size(save(classifier(seed=1), tmp_path / "inline.onnx"))
    assert inline["params"] == 15 and inline["external_files"] == []
    assert inline["file_bytes"] == (tmp_path / "inline.onnx").stat().st_size


def test_external_data_read_relative_to_model_folder(tmp_path, monkeypatch):
    d = tmp_path / "sub"
    d.mkdir()
    save_external(classifier(), d / "m.onnx")
    monkeypatch.chdir(tmp_path)  # model folder != cwd
    assert measure_size("sub/m.onnx")["params"] == 15


def test_constant_nodes_and_if_subgraphs(tmp_path):
    s = measure_size(save(with_constant_and_if(), tmp_path / "c.onnx"))
    # Constant 2x3 (5 non-zero) + then 3 (2) + else 3 (1) + initializers cond 1 (1) + unused 2 (1)
    assert s["params"] == 15
    assert s["nonzeros"] == 10


def test_int4_and_constant_list_attributes(tmp_path):
    w = numpy_helper.from_array(np.array([0, 1, -2, 0, 3], dtype=ml_dtypes.int4), "w4")
    nodes = [
        helper.make_node("Constant", [], ["f"], value_floats=[0.0, 1.0, 2.0]),
        helper.make_node("Cast", ["w4"], ["wf"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["wf", "x"], ["y"]),
    ]
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [5])],
        [w],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])
    s = measure_size(save(m, tmp_path / "i4.onnx"))
    assert s["params"] == 8 and s["nonzeros"] == 3 + 2


def test_bad_external_locations(tmp_path):
    path = save_external(classifier(), tmp_path / "m.onnx")
    (tmp_path / "weights.bin").unlink()
    with pytest.raises(InvalidModelError, match="weights.bin.*does not exist"):
        measure_size(path)
    m = onnx.load(str(path), load_external_data=False)
    for t in m.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = "../outside.bin"
    onnx.save_model(m, str(tmp_path / "esc.onnx"))
    with pytest.raises(InvalidModelError, match="leaves the model folder"):
        measure_size(tmp_path / "esc.onnx")
    with pytest.raises(InvalidModelError, match="nope.onnx"):
        measure_size(tmp_path / "nope.onnx")


def test_compare_size_ratios():
    base = {"file_bytes": 100, "params": 10, "nonzeros": 8, "compressed_bytes": 50}
    cand = {"file_bytes": 25, "params": 10, "nonzeros": 4, "compressed_bytes": 20}
    assert compare_size(base, cand) == {
        "size_ratio": 0.25,
        "params_ratio": 1.0,
        "nonzeros_ratio": 0.5,
        "compressed_ratio": 0.4,
    }
    zero = {"file_bytes": 1, "params": 0, "nonzeros": 0, "compressed_bytes": 1}
    r = compare_size(zero, {**zero, "nonzeros": 2})
    assert r["params_ratio"] == 1.0 and r["nonzeros_ratio"] is None
