"""Bad input through the real command line (issue 8, part 1, and the resource bounds of part 5).

Each refused case asserts: the exit code (2 for invalid input), one line on stderr naming the file and
the tensor, node or value at fault, no traceback, and that nothing under the test folder changed: no
output, no temporary file, the input and its data files byte-identical (the folder also holds the
"outside" files an escaping path would read).

Each accepted case (custom-domain ops, subgraphs with outer-scope references, fp16/bf16, dynamic
dimensions...) runs every built-in method with its default options and asserts exit 0, a valid output
with the input's interface, and the input untouched.

Failures at save time are simulated in-process (the CLI runs in-process through click's runner):
- output folder not writable: we run as root, where chmod does not stop writes, so the output's parent
  is a regular FILE (a real ENOTDIR), and ``tempfile.mkdtemp`` raising EACCES stands in for a folder
  without write permission (a chmod variant runs too when the tests do not run as root);
- disk full: the write of the model file writes half its bytes, then raises ENOSPC (and, for external
  data, onnx's writer fails on the second tensor);
- interrupt: the write raises KeyboardInterrupt half-way; and for a model with external data the
  interrupt arrives between moving the data file and the model file into place.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxshrink.errors import ExitCode
from onnxshrink.ir import io as model_io
from onnxshrink.ir.io import load_model
from onnxshrink.plugin.registry import load_registry
from onnxshrink.run.pipeline import passes_full_check
from onnxshrink.testing import reference_graphs as rg
from onnxshrink.testing import synthetic_feeds
from onnxshrink.toolkit.runtime import cpu_session
from tests.support.cli import assert_one_line_error
from tests.support.files import save, snapshot

BUILTINS = sorted(name for name, info in load_registry().methods.items() if info.builtin)
SECRET = b"SECRET-OUTSIDE-THE-MODEL-FOLDER" * 64


# ------------------------------------------------------------------------------------------------
# Helpers


def shrink(cli, model: Path, output: Path, *extra: str, plugin: str = "weight_prune"):
    return cli(model, "--plugin", plugin, "-o", output, "--no-validate", "-q", *extra)


def save_external(model: onnx.ModelProto, path: Path, location: str = "weights.bin") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(
        model, path, save_as_external_data=True, all_tensors_to_one_file=True, location=location, size_threshold=0
    )
    return path


def external_entry(tensor: onnx.TensorProto, key: str) -> onnx.StringStringEntryProto:
    entry = next((e for e in tensor.external_data if e.key == key), None)
    if entry is None:
        entry = tensor.external_data.add(key=key)
    return entry


def edit_external(path: Path, tensor_index: int = 0, **values: str) -> None:
    """Rewrite one external-data field (location, offset, length) of an initializer in the .onnx file."""
    model = onnx.load(path, load_external_data=False)
    for key, value in values.items():
        external_entry(model.graph.initializer[tensor_index], key).value = value
    path.write_bytes(model.SerializeToString())


# ------------------------------------------------------------------------------------------------
# Refused input: (id, build(folder) -> model path, fragments the message must hold)
#
# ``folder`` is the model's folder; its parent holds ``secret.bin``, the file an escaping path reads.


def garbage(content: bytes) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        path = folder / "model.onnx"
        path.write_bytes(content)
        return path

    return build


def truncated(fraction: float) -> Callable[[Path], Path]:
    data = rg.mlp().SerializeToString()
    return garbage(data[: int(len(data) * fraction)])


def over_protobuf_limit(folder: Path) -> Path:
    path = save(rg.mlp(), folder / "model.onnx")
    os.truncate(path, 3 * 2**30)  # sparse: no disk used, and never read
    return path


def a_folder(folder: Path) -> Path:
    path = folder / "model.onnx"
    path.mkdir()
    return path


def newer_ir(folder: Path) -> Path:
    model = rg.mlp()
    model.ir_version = onnx.IR_VERSION + 1
    return save(model, folder / "model.onnx")


def newer_opset(folder: Path) -> Path:
    model = rg.mlp()
    model.opset_import[0].version = onnx.defs.onnx_opset_version() + 1
    return save(model, folder / "model.onnx")


def external(edit: Callable[[Path, Path], None]) -> Callable[[Path], Path]:
    """mlp saved with every weight in ``weights.bin``, then ``edit(model_path, folder)``."""

    def build(folder: Path) -> Path:
        path = save_external(rg.mlp(), folder / "model.onnx")
        edit(path, folder)
        return path

    return build


def move_data_outside(location: str | None) -> Callable[[Path, Path], None]:
    def edit(path: Path, folder: Path) -> None:
        (folder / "weights.bin").rename(folder.parent / "weights.bin")
        edit_external_all(path, location or str(folder.parent / "weights.bin"))

    return edit


def edit_external_all(path: Path, location: str) -> None:
    model = onnx.load(path, load_external_data=False)
    for tensor in model.graph.initializer:
        external_entry(tensor, "location").value = location
    path.write_bytes(model.SerializeToString())


def symlink_out(path: Path, folder: Path) -> None:
    (folder / "weights.bin").rename(folder.parent / "weights.bin")
    os.symlink(folder.parent / "weights.bin", folder / "weights.bin")


def symlink_loop(path: Path, folder: Path) -> None:
    (folder / "weights.bin").unlink()
    os.symlink("weights.bin", folder / "weights.bin")


def short_data(path: Path, folder: Path) -> None:
    data = (folder / "weights.bin").read_bytes()
    (folder / "weights.bin").write_bytes(data[:-16])


def missing_data(path: Path, folder: Path) -> None:
    (folder / "weights.bin").unlink()


def set_field(**values: str) -> Callable[[Path, Path], None]:
    return lambda path, folder: edit_external(path, 0, **values)


def terabytes_in_a_sparse_file(folder: Path) -> Path:
    """A tensor of 2**41 floats (8 TiB) whose data file really is 8 TiB long (sparse, no disk used)."""
    weights = folder / "weights.bin"
    weights.touch()
    try:
        os.truncate(weights, 2**43)
    except OSError as exc:
        pytest.skip(f"this file system cannot hold an 8 TiB sparse file ({exc.strerror})")
    tensor = TensorProto(name="huge", data_type=TensorProto.FLOAT, dims=[2**41], data_location=TensorProto.EXTERNAL)
    tensor.external_data.add(key="location", value="weights.bin")
    tensor.external_data.add(key="offset", value="0")
    tensor.external_data.add(key="length", value=str(2**43))
    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["huge"], ["s"], keepdims=0), helper.make_node("Add", ["x", "s"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        [tensor],
    )
    return save(_model(graph), folder / "model.onnx")


def _model(graph: onnx.GraphProto, opset: int = 17, **extra_opsets: int) -> onnx.ModelProto:
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, v) for d, v in extra_opsets.items()]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="onnxshrink-tests")
    model.ir_version = 8
    return model


def escaping_constant(where: str) -> Callable[[Path], Path]:
    """A Constant node whose tensor points at ``../secret.bin``: in a model-local function, or behind an
    attribute whose declared type is not TENSOR (onnx's loader still visits the tensor)."""

    def build(folder: Path) -> Path:
        tensor = TensorProto(
            name="stolen", data_type=TensorProto.UINT8, dims=[len(SECRET)], data_location=TensorProto.EXTERNAL
        )
        tensor.external_data.add(key="location", value="../secret.bin")
        value = helper.make_attribute("value", np.zeros(1, np.float32))
        value.t.CopyFrom(tensor)
        if where == "mistyped attribute":
            value.type = onnx.AttributeProto.FLOAT
            value.f = 0.0
        const = helper.make_node("Constant", [], ["c"])
        const.attribute.append(value)
        if where == "function":
            function = helper.make_function(
                "local",
                "Leak",
                ["x"],
                ["y"],
                [const, helper.make_node("Identity", ["x"], ["y"])],
                [helper.make_opsetid("", 17)],
            )
            graph = helper.make_graph(
                [helper.make_node("Leak", ["x"], ["y"], domain="local")],
                "g",
                [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
            )
            model = _model(graph, local=1)
            model.functions.append(function)
        else:
            graph = helper.make_graph(
                [const, helper.make_node("Identity", ["x"], ["y"])],
                "g",
                [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
            )
            model = _model(graph)
        return save(model, folder / "model.onnx")

    return build


def sparse_external(folder: Path) -> Path:
    """A sparse initializer whose values live in external data (inside the folder): onnx does not load
    those, onnxruntime would read the file later on its own."""
    (folder / "values.bin").write_bytes(np.ones(4, np.float32).tobytes())
    values = TensorProto(name="S", data_type=TensorProto.FLOAT, dims=[4], data_location=TensorProto.EXTERNAL)
    for key, value in (("location", "values.bin"), ("offset", "0"), ("length", "16")):
        values.external_data.add(key=key, value=value)
    sparse = helper.make_sparse_tensor(values, numpy_helper.from_array(np.arange(4, dtype=np.int64), "S_indices"), [16])
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "S"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [16])],
    )
    graph.sparse_initializer.append(sparse)
    return save(_model(graph), folder / "model.onnx")


def inline(edit: Callable[[onnx.ModelProto], None]) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        model = rg.mlp()
        edit(model)
        return save(model, folder / "model.onnx")

    return build


def declare_huge_with_4_bytes(model: onnx.ModelProto) -> None:
    model.graph.initializer[0].CopyFrom(
        TensorProto(name="fc1.weight", data_type=TensorProto.FLOAT, dims=[10**12], raw_data=b"\0" * 4)
    )


def declare_huge_with_2_floats(model: onnx.ModelProto) -> None:
    model.graph.initializer[0].CopyFrom(
        TensorProto(name="fc1.weight", data_type=TensorProto.FLOAT, dims=[10**6, 10**6], float_data=[1.0, 2.0])
    )


def raw_longer_than_shape(model: onnx.ModelProto) -> None:
    model.graph.initializer[0].raw_data += b"\0" * 8


def negative_dim(model: onnx.ModelProto) -> None:
    model.graph.initializer[0].dims[0] = -32


def huge_sparse_initializer(model: onnx.ModelProto) -> None:
    values = numpy_helper.from_array(np.ones(1, np.float32), "S")
    sparse = helper.make_sparse_tensor(
        values, numpy_helper.from_array(np.array([5], np.int64), "S_indices"), [10**6, 10**6]
    )
    model.graph.sparse_initializer.append(sparse)


def duplicate_node_names(model: onnx.ModelProto) -> None:
    for node in model.graph.node:
        node.name = "same"


def duplicate_tensor_names(model: onnx.ModelProto) -> None:
    model.graph.node[1].output[0] = model.graph.node[0].output[0]  # Relu now also writes 'h'


def duplicate_initializer(model: onnx.ModelProto) -> None:
    model.graph.initializer.append(model.graph.initializer[0])


def input_without_shape(model: onnx.ModelProto) -> None:
    model.graph.input[0].type.tensor_type.ClearField("shape")


def unknown_attribute(model: onnx.ModelProto) -> None:
    model.graph.node[1].attribute.append(helper.make_attribute("foo", 1))


REFUSED = [
    ("empty file", garbage(b""), ["empty file"]),
    ("random bytes", garbage(bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8))), ["not"]),
    ("truncated 10%", truncated(0.1), []),
    ("truncated 50%", truncated(0.5), []),
    ("truncated 90%", truncated(0.9), []),
    ("protobuf text format", garbage(str(rg.mlp()).encode()), []),
    ("onnx text syntax", garbage(onnx.printer.to_text(rg.mlp()).encode()), []),
    ("a folder", a_folder, ["folder"]),
    ("over 2 GiB", over_protobuf_limit, ["2 GiB"]),
    ("newer IR version", newer_ir, ["IR version"]),
    ("newer opset", newer_opset, ["opset"]),
    ("external ../", external(move_data_outside("../weights.bin")), ["'fc1.weight'", "leaves the model's folder"]),
    (
        "external a/../../",
        external(move_data_outside("a/../../weights.bin")),
        ["'fc1.weight'", "leaves the model's folder"],
    ),
    ("external absolute", external(move_data_outside(None)), ["'fc1.weight'", "absolute"]),
    ("external symlink out", external(symlink_out), ["'fc1.weight'", "leaves the model's folder"]),
    ("external symlink loop", external(symlink_loop), ["'fc1.weight'"]),
    (
        "external NUL in location",
        external(set_field(location="weights\0.bin")),
        ["'fc1.weight'", "unusable external data location"],
    ),
    ("external missing file", external(missing_data), ["'fc1.weight'", "missing"]),
    ("external short file", external(short_data), ["too short"]),
    ("external negative offset", external(set_field(offset="-8")), ["'fc1.weight'", "negative"]),
    ("external huge offset", external(set_field(offset=str(10**15))), ["'fc1.weight'", "too short"]),
    ("external 10 TB length", external(set_field(length=str(10 * 10**12))), ["'fc1.weight'", "too short"]),
    ("external unknown key", external(set_field(ofset="0")), ["'fc1.weight'", "unknown external data key 'ofset'"]),
    ("external 8 TiB sparse data file", terabytes_in_a_sparse_file, ["8.0 TiB of external data", "memory"]),
    ("external data in a function", escaping_constant("function"), ["'stolen'", "leaves the model's folder"]),
    (
        "external data behind a mistyped attribute",
        escaping_constant("mistyped attribute"),
        ["'stolen'", "leaves the model's folder"],
    ),
    ("external data in a sparse tensor", sparse_external, ["'S'", "not supported"]),
    (
        "dims 10**12 with 4 bytes",
        inline(declare_huge_with_4_bytes),
        ["'fc1.weight'", "needs 4000000000000 bytes", "holds 4"],
    ),
    ("dims 10**12 with 2 floats", inline(declare_huge_with_2_floats), ["'fc1.weight'", "needs 1000000000000 values"]),
    ("raw_data longer than shape", inline(raw_longer_than_shape), ["'fc1.weight'", "needs 2048 bytes", "holds 2056"]),
    ("negative dimension", inline(negative_dim), ["'fc1.weight'", "negative dimension"]),
    ("sparse tensor of 4 TB dense", inline(huge_sparse_initializer), ["dense sparse tensors", "memory"]),
    ("duplicate node names", inline(duplicate_node_names), ["node name 'same'"]),
    ("duplicate tensor names", inline(duplicate_tensor_names), ["'h'"]),
    ("duplicate initializer", inline(duplicate_initializer), ["fc1.weight"]),
    ("graph input without shape", inline(input_without_shape), ["graph input 'input'", "no shape"]),
    ("unknown attribute", inline(unknown_attribute), ["foo", "relu1"]),
]


@pytest.mark.parametrize("build, fragments", [pytest.param(b, f, id=i) for i, b, f in REFUSED])
def test_invalid_input_is_refused_with_nothing_written(cli, tmp_path, build, fragments):
    folder = tmp_path / "models"
    folder.mkdir()
    (tmp_path / "secret.bin").write_bytes(SECRET)
    model = build(folder)
    before = snapshot(tmp_path)
    result = shrink(cli, model, folder / "out.onnx")
    assert_one_line_error(result, 2, str(model), *fragments)
    assert snapshot(tmp_path) == before


def test_missing_model_file(cli, tmp_path):
    before = snapshot(tmp_path)
    assert_one_line_error(shrink(cli, tmp_path / "nope.onnx", tmp_path / "out.onnx"), 2, "nope.onnx", "no such file")
    assert snapshot(tmp_path) == before


def test_garbage_fails_the_same_in_a_real_process(cli_subprocess, tmp_path):
    """The in-process runner above is the same code as the installed command; one real process proves it."""
    model = garbage(bytes(np.random.default_rng(1).integers(0, 256, 512, dtype=np.uint8)))(tmp_path)
    before = snapshot(tmp_path)
    result = cli_subprocess(model, "--plugin", "weight_prune", "-o", tmp_path / "out.onnx", "--no-validate")
    assert_one_line_error(result, 2, str(model))
    assert snapshot(tmp_path) == before


# ------------------------------------------------------------------------------------------------
# Accepted input: every built-in method (default options) must exit 0 with a valid output


@dataclass
class Accepted:
    build: Callable[[], onnx.ModelProto]
    check: Callable[[onnx.ModelProto, onnx.ModelProto, dict], None] | None = None
    runs_in_onnxruntime: bool = True
    feeds_like: Callable[[], onnx.ModelProto] | None = None  # a model with the same inputs and known shapes


def output_is_also_input() -> onnx.ModelProto:
    model = rg.mlp()
    model.graph.output.append(model.graph.input[0])
    return model


def custom_domain_op() -> onnx.ModelProto:
    """An op of a domain onnxruntime does not know (made for another runtime) in the middle of an MLP."""
    model = rg.mlp()
    relu = model.graph.node[1]
    relu.op_type, relu.domain = "FancyRelu", "com.example"
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    return model


def custom_op_kept(before: onnx.ModelProto, after: onnx.ModelProto, report: dict) -> None:
    assert [(n.domain, n.op_type) for n in after.graph.node if n.domain == "com.example"] == [
        ("com.example", "FancyRelu")
    ]
    warnings = [w for step in report["steps"] for w in step["warnings"]]
    assert any("com.example::FancyRelu" in w and "onnxruntime cannot load the input model" in w for w in warnings), (
        warnings
    )


def contrib_op_kept(before: onnx.ModelProto, after: onnx.ModelProto, report: dict) -> None:
    assert [n.op_type for n in after.graph.node if n.domain == "com.microsoft"] == ["FusedMatMul"]


def scan_outer_scope() -> onnx.ModelProto:
    """A Scan whose body reads a weight of the outer graph."""
    rng = np.random.default_rng(0)
    body = helper.make_graph(
        [
            helper.make_node("MatMul", ["row", "W_outer"], ["h"], name="scan_mm"),
            helper.make_node("Add", ["acc_in", "h"], ["acc_out"], name="scan_add"),
            helper.make_node("Identity", ["acc_out"], ["row_out"], name="scan_id"),
        ],
        "scan_body",
        [
            helper.make_tensor_value_info("acc_in", TensorProto.FLOAT, [1, 16]),
            helper.make_tensor_value_info("row", TensorProto.FLOAT, [1, 16]),
        ],
        [
            helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, [1, 16]),
            helper.make_tensor_value_info("row_out", TensorProto.FLOAT, [1, 16]),
        ],
    )
    graph = helper.make_graph(
        [helper.make_node("Scan", ["init", "input"], ["final", "rows"], name="scan", body=body, num_scan_inputs=1)],
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["steps", 1, 16])],
        [
            helper.make_tensor_value_info("final", TensorProto.FLOAT, [1, 16]),
            helper.make_tensor_value_info("rows", TensorProto.FLOAT, ["steps", 1, 16]),
        ],
        [
            numpy_helper.from_array((rng.standard_normal((16, 16)) / 4).astype(np.float32), "W_outer"),
            numpy_helper.from_array(np.zeros((1, 16), np.float32), "init"),
        ],
    )
    return _model(graph)


def outer_reference_kept(before: onnx.ModelProto, after: onnx.ModelProto, report: dict) -> None:
    """Subgraphs still read the outer weights (nothing copied into them, nothing left dangling)."""
    from onnxshrink.ir.walk import outer_references, subgraphs

    for node_before, node_after in zip(before.graph.node, after.graph.node):
        for sub_before, sub_after in zip(subgraphs(node_before), subgraphs(node_after)):
            if outer_references(sub_before) and node_after.op_type == node_before.op_type:
                assert outer_references(sub_after), f"{node_after.name}: the subgraph no longer reads the outer scope"


def without_shape_information() -> onnx.ModelProto:
    """No value_info and every graph input/output dimension unknown (neither a value nor a name)."""
    model = rg.conv_bn_residual()
    del model.graph.value_info[:]
    for value in [*model.graph.input, *model.graph.output]:
        for dim in value.type.tensor_type.shape.dim:
            dim.Clear()
    return model


def dims_stay_dynamic(before: onnx.ModelProto, after: onnx.ModelProto, report: dict) -> None:
    def dims(model: onnx.ModelProto, kind: str) -> list[list[str | int]]:
        values = getattr(model.graph, kind)
        return [[d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in values]

    for kind in ("input", "output"):
        assert dims(after, kind) == dims(before, kind), kind
    assert any(
        isinstance(d, str) and d
        for v in before.graph.input
        for d in [x.dim_param for x in v.type.tensor_type.shape.dim]
    )


def bfloat16_mlp(cast_to_float: bool) -> Callable[[], onnx.ModelProto]:
    """An MLP stored in bfloat16: end to end (onnxruntime's CPU EP has no bfloat16 MatMul), or weights
    only, cast to float32 in the graph (as bf16 checkpoints are often exported)."""

    def build() -> onnx.ModelProto:
        model = rg.fp16_mlp()
        for tensor in model.graph.initializer:
            values = numpy_helper.to_array(tensor).astype(np.float32).astype(ml_dtypes.bfloat16)
            tensor.CopyFrom(numpy_helper.from_array(values, tensor.name))
        if not cast_to_float:
            for value in [*model.graph.input, *model.graph.output]:
                value.type.tensor_type.elem_type = TensorProto.BFLOAT16
            return model
        for value in [*model.graph.input, *model.graph.output]:
            value.type.tensor_type.elem_type = TensorProto.FLOAT
        casts = []
        for tensor in model.graph.initializer:
            casts.append(
                helper.make_node(
                    "Cast", [tensor.name], [f"{tensor.name}_f32"], name=f"cast_{tensor.name}", to=TensorProto.FLOAT
                )
            )
        for node in model.graph.node:
            node.input[:] = [f"{i}_f32" if i in {t.name for t in model.graph.initializer} else i for i in node.input]
        nodes = casts + list(model.graph.node)
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        return model

    return build


def already_quantized_left_alone(before: onnx.ModelProto, after: onnx.ModelProto, report: dict) -> None:
    quantized = {t.name: numpy_helper.to_array(t) for t in before.graph.initializer if t.data_type == TensorProto.INT8}
    for tensor in after.graph.initializer:
        if tensor.name in quantized:
            np.testing.assert_array_equal(numpy_helper.to_array(tensor), quantized[tensor.name])
    assert [n.op_type for n in after.graph.node] == [n.op_type for n in before.graph.node]


ACCEPTED = {
    "graph output that is also an input": Accepted(output_is_also_input),
    "initializer that is also a graph input": Accepted(rg.initializer_as_input),
    "custom-domain op onnxruntime cannot run": Accepted(custom_domain_op, custom_op_kept, runs_in_onnxruntime=False),
    "contrib op onnxruntime runs": Accepted(rg.contrib_op_weight, contrib_op_kept),
    "If with outer-scope weights": Accepted(rg.if_subgraph, outer_reference_kept),
    "Loop with outer-scope weights": Accepted(rg.loop_subgraph, outer_reference_kept),
    "Scan with outer-scope weights": Accepted(scan_outer_scope, outer_reference_kept),
    "no shape information": Accepted(without_shape_information, feeds_like=rg.conv_bn_residual),
    "dynamic dimensions": Accepted(rg.dynamic_dims, dims_stay_dynamic),
    "float16": Accepted(rg.fp16_mlp),
    "bfloat16 end to end": Accepted(bfloat16_mlp(cast_to_float=False), runs_in_onnxruntime=False),
    "bfloat16 weights cast to float": Accepted(bfloat16_mlp(cast_to_float=True)),
    "already quantized": Accepted(rg.qdq_quantized, already_quantized_left_alone),
}


def _accepted_params():
    for case in ACCEPTED:
        for method in BUILTINS:
            yield pytest.param(case, method, id=f"{case}-{method}")


def interface(model: onnx.ModelProto) -> list[tuple]:
    stored = {t.name for t in model.graph.initializer}
    rows = []
    for kind in ("input", "output"):
        for v in getattr(model.graph, kind):
            if kind == "input" and v.name in stored:
                continue
            t = v.type.tensor_type
            rows.append((kind, v.name, t.elem_type, len(t.shape.dim) if t.HasField("shape") else None))
    return rows


@pytest.mark.parametrize("case, method", list(_accepted_params()))
def test_awkward_but_valid_input_is_handled(cli, tmp_path, case, method):
    spec = ACCEPTED[case]
    original = spec.build()
    model = save(original, tmp_path / "model.onnx")
    before = snapshot(tmp_path)
    out, report_path = tmp_path / "out" / "model.small.onnx", tmp_path / "out" / "report.json"
    result = shrink(cli, model, out, "--report", report_path, plugin=method)
    if not spec.runs_in_onnxruntime and result.exit_code == 2:
        # a method that must run the model (calibration, measurement) may refuse such an input:
        # one line, nothing written
        assert_one_line_error(
            result, 2, f"plugin {method!r} needs to run the model", "onnxruntime cannot load the input model"
        )
        after = snapshot(tmp_path)
        assert {k: v for k, v in after.items() if k not in ("out", "out/report.json")} == before  # no model written
        assert json.loads(report_path.read_text())["error"]["exit_code"] == 2  # the report asked for says why
        return
    assert result.exit_code == 0, result

    assert {k: v for k, v in snapshot(tmp_path).items() if not k.startswith("out")} == before  # input untouched
    assert sorted(p.name for p in out.parent.iterdir()) == sorted(
        ["model.small.onnx", "report.json"]
    )  # no temporary files
    produced = load_model(out).model  # our own checks and onnx.checker, from the file
    onnx.checker.check_model(produced, full_check=passes_full_check(original))
    assert interface(produced) == interface(original)
    report = json.loads(report_path.read_text())
    if spec.runs_in_onnxruntime:
        feed = synthetic_feeds((spec.feeds_like or spec.build)(), 1)[0]
        expected = cpu_session(original).run(None, feed)
        got = cpu_session(produced).run(None, feed)
        assert [(g.dtype, g.shape) for g in got] == [(e.dtype, e.shape) for e in expected]
    if spec.check:
        spec.check(original, produced, report)


def test_external_data_input_gives_external_data_output_and_stays_untouched(cli, tmp_path):
    model = save_external(rg.conv_bn_residual(), tmp_path / "in" / "model.onnx")
    before = snapshot(tmp_path)
    out = tmp_path / "out" / "model.onnx"
    assert shrink(cli, model, out).exit_code == 0
    assert {k: v for k, v in snapshot(tmp_path).items() if k.startswith("in")} == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["model.onnx", "model.onnx.data"]
    assert load_model(out).uses_external_data


# ------------------------------------------------------------------------------------------------
# Output path


@pytest.mark.parametrize("how", ["same path", "symlink", "hard link", "relative path with .."])
def test_output_may_not_be_the_input(cli, tmp_path, how):
    model = save(rg.mlp(), tmp_path / "model.onnx")
    (tmp_path / "sub").mkdir()
    output = {
        "same path": model,
        "symlink": tmp_path / "link.onnx",
        "hard link": tmp_path / "hard.onnx",
        "relative path with ..": tmp_path / "sub" / ".." / "model.onnx",
    }[how]
    if how == "symlink":
        os.symlink(model, output)
    if how == "hard link":
        os.link(model, output)
    before = snapshot(tmp_path)
    assert_one_line_error(shrink(cli, model, output), 2, "is the input", str(output))
    assert snapshot(tmp_path) == before


def test_output_data_file_may_not_be_the_input_data_file(cli, tmp_path):
    """``-o out.onnx`` writes ``out.onnx.data``: refused when that is the input's own data file."""
    model = save_external(rg.mlp(), tmp_path / "model.onnx", location="out.onnx.data")
    before = snapshot(tmp_path)
    assert_one_line_error(shrink(cli, model, tmp_path / "out.onnx"), 2, "out.onnx.data", "is the input")
    assert snapshot(tmp_path) == before


def test_output_folder_that_is_a_file_is_refused_before_any_method_runs(cli, tmp_path):
    model = save(rg.mlp(), tmp_path / "model.onnx")
    (tmp_path / "not_a_folder").write_text("a regular file")
    before = snapshot(tmp_path)
    result = shrink(cli, model, tmp_path / "not_a_folder" / "deeper" / "out.onnx")
    assert_one_line_error(result, 2, "not_a_folder", "is not a folder")
    assert snapshot(tmp_path) == before


@pytest.mark.skipif(
    hasattr(os, "geteuid") and os.geteuid() == 0,
    reason="root ignores folder permissions; the EACCES case is simulated below",
)
def test_output_folder_without_write_permission(cli, tmp_path):
    model = save(rg.mlp(), tmp_path / "model.onnx")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        before = snapshot(tmp_path)
        assert_one_line_error(shrink(cli, model, locked / "out.onnx"), 2, "not writable")
        assert snapshot(tmp_path) == before
    finally:
        locked.chmod(0o700)


def test_output_folder_refusing_writes_at_save_time(cli, tmp_path, monkeypatch):
    """EACCES when the temporary file is created (what a read-only folder gives a non-root user)."""
    model = save(rg.mlp(), tmp_path / "model.onnx")
    calls = []

    def denied(*args, **kwargs):
        calls.append(kwargs.get("dir"))
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(tempfile, "mkdtemp", denied)
    before = snapshot(tmp_path)
    assert_one_line_error(shrink(cli, model, tmp_path / "out" / "out.onnx"), 2, "out.onnx", "Permission denied")
    assert calls, "the fault was not injected: save_model no longer creates its temporary folder with tempfile.mkdtemp"
    assert {k: v for k, v in snapshot(tmp_path).items() if k != "out"} == before
    assert list((tmp_path / "out").iterdir()) == []


class FailingWrites:
    """Replace ``open`` in onnxshrink.ir.io: files opened for writing write half, then raise ``error``."""

    def __init__(self, error: BaseException):
        self.error, self.calls = error, 0

    def __call__(self, file, mode="r", *args, **kwargs):
        handle = open(file, mode, *args, **kwargs)  # noqa: SIM115 - wrapped below
        if "w" not in mode and "a" not in mode:
            return handle
        self.calls += 1
        outer = self

        class Half:
            def __enter__(self):
                return self

            def __exit__(self, *exc):
                handle.close()
                return False

            def write(self, data):
                handle.write(data[: len(data) // 2])
                handle.flush()
                raise outer.error

            def __getattr__(self, name):
                return getattr(handle, name)

        return Half()


@pytest.mark.parametrize(
    "error, code, fragment",
    [
        (OSError(errno.ENOSPC, "No space left on device"), 2, "No space left on device"),
        (KeyboardInterrupt(), 130, "interrupted"),
    ],
    ids=["disk full", "interrupt"],
)
def test_failure_while_writing_leaves_no_partial_file_and_keeps_the_previous_output(
    cli, tmp_path, monkeypatch, error, code, fragment
):
    model = save(rg.mlp(), tmp_path / "model.onnx")
    (tmp_path / "out.onnx").write_bytes(b"the previous output")
    writes = FailingWrites(error)
    monkeypatch.setattr(model_io, "open", writes, raising=False)
    before = snapshot(tmp_path)
    assert_one_line_error(shrink(cli, model, tmp_path / "out.onnx"), code, fragment)
    assert writes.calls == 1, "the fault was not injected: save_model no longer writes with open()"
    assert snapshot(tmp_path) == before


def test_disk_full_while_writing_external_data(cli, tmp_path, monkeypatch):
    import onnxshrink.ir.external as external

    model = save_external(rg.mlp(), tmp_path / "model.onnx")
    written = []

    class FullDisk:
        """The output's data file: the second tensor written finds the disk full."""

        def __init__(self, fh):
            self.fh = fh

        def write(self, data):
            if written:
                raise OSError(errno.ENOSPC, "No space left on device")
            written.append(len(data))
            return self.fh.write(data)

        def __getattr__(self, name):
            return getattr(self.fh, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return self.fh.__exit__(*exc)

    def fake_open(path, mode="r", *args, **kwargs):
        fh = open(path, mode, *args, **kwargs)
        return FullDisk(fh) if mode == "wb" and str(path).endswith(".data") else fh

    monkeypatch.setattr(external, "open", fake_open, raising=False)
    before = snapshot(tmp_path)
    assert_one_line_error(shrink(cli, model, tmp_path / "out.onnx"), 2, "No space left on device")
    assert written, "the fault was not injected: the external-data writer no longer writes through open()"
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("previous", [False, True], ids=["no previous output", "previous output pair"])
def test_interrupt_between_data_and_model_file_restores_what_was_there(cli, tmp_path, monkeypatch, previous):
    """The data file is moved into place first; an interrupt before the model follows must not leave a
    new data file beside an old model (or alone)."""
    model = save_external(rg.mlp(), tmp_path / "model.onnx")
    if previous:
        save_external(rg.conv_bn_residual(), tmp_path / "out.onnx", location="out.onnx.data")
    real_replace = os.replace
    moved = []

    def interrupt_at_model(src, dst, *args, **kwargs):
        if Path(dst).name == "out.onnx" and Path(src).parent.name.startswith(".onnxshrink-"):
            raise KeyboardInterrupt
        moved.append(Path(dst).name)
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", interrupt_at_model)
    before = snapshot(tmp_path)
    result = shrink(cli, model, tmp_path / "out.onnx")
    assert_one_line_error(result, 130, "interrupted")
    assert result.exit_code is ExitCode.INTERRUPTED
    assert "out.onnx.data" in moved, "the fault was not injected between the two files"
    assert snapshot(tmp_path) == before


# ------------------------------------------------------------------------------------------------
# Bad options, and the onnx version


@pytest.mark.parametrize(
    "plugin, fragments",
    [
        ("no_such_method", ["unknown plugin 'no_such_method'", "weight_prune"]),
        ("weight_prune:bogus=1", ["plugin 'weight_prune'", "unknown option 'bogus'"]),
        ("weight_prune:sparsity=2", ["plugin 'weight_prune'", "'sparsity'", "(got 2.0)"]),
        ("weight_prune:sparsity=abc", ["plugin 'weight_prune'", "'sparsity'", "'abc'"]),
        ("weight_prune:sparsity=nan", ["plugin 'weight_prune'", "'sparsity'", "'nan'"]),
        ("weight_prune:scope=galaxy", ["plugin 'weight_prune'", "'scope'", "'galaxy'"]),
        ("weight_prune:min_size=-1", ["plugin 'weight_prune'", "'min_size'", "-1"]),
        ("weight_prune:", ["nothing after ':'"]),
        ("weight_prune:sparsity", ["'sparsity' is not key=value"]),
    ],
)
def test_bad_option_is_refused_naming_plugin_option_and_value(cli, tmp_path, plugin, fragments):
    model = save(rg.mlp(), tmp_path / "model.onnx")
    before = snapshot(tmp_path)
    assert_one_line_error(shrink(cli, model, tmp_path / "out.onnx", plugin=plugin), 2, *fragments)
    assert snapshot(tmp_path) == before


def test_onnx_has_the_external_data_path_fixes():
    """onnx's own external-data checks (CVE-2022-25882, CVE-2024-27318, CVE-2025-51480 and the symlink and
    hard-link escapes fixed in onnx 1.21) back ours up: the project requires onnx >= 1.21 and runs with it."""
    import tomllib

    from tests.support.files import ROOT

    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert any(
        d.replace(" ", "").startswith("onnx>=1.2") and tuple(map(int, d.split(">=")[1].split(".")[:2])) >= (1, 21)
        for d in dependencies
    ), dependencies
    assert tuple(int(part) for part in onnx.__version__.split(".")[:2]) >= (1, 21)


TENSOR_TYPES = {name: code for name, code in TensorProto.DataType.items() if code != TensorProto.UNDEFINED}


def well_formed_tensor(data_type: int, raw: bool) -> onnx.TensorProto:
    """A 3x5 tensor of ``data_type`` as onnx's own helpers write it, in raw_data or in its typed field."""
    if data_type == TensorProto.STRING:
        return helper.make_tensor("t", data_type, (3, 5), [b"ab"] * 15)
    values = np.ones((3, 5)).astype(helper.tensor_dtype_to_np_dtype(data_type))
    if raw:
        return numpy_helper.from_array(values, "t")
    return helper.make_tensor(
        "t", data_type, (3, 5), values.ravel().tolist() if values.dtype.kind in "biufc" else values.ravel(), raw=False
    )


@pytest.mark.parametrize("data_type", list(TENSOR_TYPES.values()), ids=list(TENSOR_TYPES))
@pytest.mark.parametrize("raw", [True, False], ids=["raw_data", "typed field"])
def test_size_check_accepts_every_well_formed_tensor_and_refuses_one_value_more(tmp_path, data_type, raw):
    """The declared-size check (run before anything is allocated) agrees with onnx on every tensor type,
    packed int4/int2/float4/float6 included, whether the values sit in raw_data or in a typed field."""
    from onnxshrink.ir.io import _check_inline_data  # the check itself, on a lone tensor

    if data_type == TensorProto.STRING and raw:
        pytest.skip("strings have no raw_data form")
    tensor = well_formed_tensor(data_type, raw)
    assert numpy_helper.to_array(tensor).shape == (3, 5)  # onnx reads it as a 3x5 tensor
    _check_inline_data(tmp_path / "m.onnx", tensor)
    grown = TensorProto()
    grown.CopyFrom(tensor)
    if tensor.raw_data:
        grown.raw_data += b"\0"
    else:
        field = next(
            f
            for f in ("float_data", "int32_data", "string_data", "int64_data", "double_data", "uint64_data")
            if len(getattr(grown, f))
        )
        getattr(grown, field).append(b"x" if field == "string_data" else 0)
    with pytest.raises(model_io.InvalidModelError, match="tensor 't'.* needs"):
        _check_inline_data(tmp_path / "m.onnx", grown)
