"""Loading refuses unsafe or broken input with one line naming the file; saving is atomic."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from onnxshrink.errors import InvalidModelError, UsageError
from onnxshrink.ir.io import check_output_path, load_model, save_model
from onnxshrink.testing.reference_graphs import mlp
from tests.support.files import folder_digest


def save_external(model: onnx.ModelProto, path: Path, location: str = "weights.bin") -> None:
    onnx.save_model(
        model, path, save_as_external_data=True, all_tensors_to_one_file=True, location=location, size_threshold=0
    )


def set_location(model: onnx.ModelProto, location: str, **extra: str) -> onnx.ModelProto:
    for t in model.graph.initializer:
        for entry in t.external_data:
            if entry.key == "location":
                entry.value = location
            if entry.key in extra:
                entry.value = extra[entry.key]
    return model


def assert_refused(path: Path, *fragments: str) -> str:
    with pytest.raises(InvalidModelError) as info:
        load_model(path)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message
    assert info.value.exit_code == 2
    return message


def test_loads_reference_model(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save_model(mlp(), path)
    loaded = load_model(path)
    assert [i.name for i in loaded.model.graph.input] == ["input"]
    assert not loaded.uses_external_data


@pytest.mark.parametrize(
    "content, fragment",
    [
        (b"", "empty file"),
        (bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)), "not"),
        (b'ir_version: 8\ngraph { name: "g" }\n', "not"),
    ],
    ids=["empty", "random-bytes", "text-format"],
)
def test_garbage_is_refused(tmp_path, content, fragment):
    path = tmp_path / "bad.onnx"
    path.write_bytes(content)
    assert_refused(path, fragment)


def test_missing_file_and_folder(tmp_path):
    assert_refused(tmp_path / "nope.onnx", "no such file")
    assert_refused(tmp_path, "folder")


@pytest.mark.parametrize("keep", [0.25, 0.5, 0.9])
def test_truncated_protobuf_is_refused(tmp_path, keep):
    data = mlp().SerializeToString()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[: int(len(data) * keep)])
    assert_refused(path)


def test_newer_ir_and_opset_are_refused(tmp_path):
    model = mlp()
    model.ir_version = onnx.IR_VERSION + 1
    path = tmp_path / "ir.onnx"
    path.write_bytes(model.SerializeToString())
    assert_refused(path, "IR version")
    model = mlp()
    model.opset_import[0].version = onnx.defs.onnx_opset_version() + 1
    path.write_bytes(model.SerializeToString())
    assert_refused(path, "opset")


def test_external_data_loads(tmp_path):
    path = tmp_path / "ext.onnx"
    save_external(mlp(), path)
    loaded = load_model(path)
    assert loaded.uses_external_data
    assert [p.name for p in loaded.external_files] == ["weights.bin"]
    expected = {t.name: numpy_helper.to_array(t) for t in mlp().graph.initializer}
    for t in loaded.model.graph.initializer:
        np.testing.assert_array_equal(numpy_helper.to_array(t), expected[t.name])


@pytest.mark.parametrize(
    "location, fragment",
    [
        ("../weights.bin", "leaves the model's folder"),
        ("a/../../weights.bin", "leaves the model's folder"),
        ("/etc/passwd", "absolute"),
    ],
)
def test_external_data_outside_folder_is_refused(tmp_path, location, fragment):
    inner = tmp_path / "inner"
    inner.mkdir()
    path = inner / "m.onnx"
    save_external(mlp(), path)
    (inner / "weights.bin").rename(tmp_path / "weights.bin")
    model = onnx.load(path, load_external_data=False)
    path.write_bytes(set_location(model, location).SerializeToString())
    assert_refused(path, fragment)


def test_symlink_out_of_folder_is_refused(tmp_path):
    inner = tmp_path / "inner"
    inner.mkdir()
    path = inner / "m.onnx"
    save_external(mlp(), path)
    (inner / "weights.bin").rename(tmp_path / "outside.bin")
    os.symlink(tmp_path / "outside.bin", inner / "weights.bin")
    assert_refused(path, "leaves the model's folder")


def test_missing_and_short_external_data(tmp_path):
    path = tmp_path / "m.onnx"
    save_external(mlp(), path)
    data = (tmp_path / "weights.bin").read_bytes()
    (tmp_path / "weights.bin").write_bytes(data[:-16])
    assert_refused(path, "too short")
    (tmp_path / "weights.bin").unlink()
    assert_refused(path, "missing")


@pytest.mark.parametrize(
    "offset, length, fragment",
    [("-8", None, "negative"), ("0", str(10**15), "too short"), (str(10**15), None, "too short")],
)
def test_bad_offsets_are_refused_before_reading(tmp_path, offset, length, fragment):
    path = tmp_path / "m.onnx"
    save_external(mlp(), path)
    model = onnx.load(path, load_external_data=False)
    tensor = model.graph.initializer[0]
    keys = {e.key: e for e in tensor.external_data}
    keys["offset"].value = offset
    if length is not None:
        keys["length"].value = length
    path.write_bytes(model.SerializeToString())
    assert_refused(path, fragment)


def test_output_may_not_be_the_input(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save_model(mlp(), path)
    link = tmp_path / "link.onnx"
    os.symlink(path, link)
    hard = tmp_path / "hard.onnx"
    os.link(path, hard)
    for out in (path, link, hard):
        with pytest.raises(UsageError, match="is the input"):
            check_output_path(out, [path])


def test_save_is_atomic_and_leaves_no_temporary_files(tmp_path):
    out = tmp_path / "sub" / "out.onnx"
    written = save_model(mlp(), out)
    assert written == [out]
    assert sorted(p.name for p in out.parent.iterdir()) == ["out.onnx"]
    onnx.checker.check_model(str(out))


def test_save_with_external_data_uses_a_deterministic_name(tmp_path):
    out = tmp_path / "out.onnx"
    written = save_model(mlp(), out, external_data=True)
    assert [p.name for p in written] == ["out.onnx.data", "out.onnx"]
    first = folder_digest(tmp_path)
    save_model(mlp(), out, external_data=True)
    assert folder_digest(tmp_path) == first
    assert load_model(out).uses_external_data


def test_failed_save_keeps_previous_output(tmp_path, monkeypatch):
    out = tmp_path / "out.onnx"
    out.write_bytes(b"previous")

    def boom(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(UsageError, match="No space left on device"):
        save_model(mlp(), out)
    assert out.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.onnx"]
