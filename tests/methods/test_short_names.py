"""short_names: every intermediate tensor and node gets a short name; outputs stay bit-identical."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxshrink
from onnxshrink.testing import run_method
from onnxshrink_plugins.short_names import ShortNames, base36
from tests.support.cli import assert_one_line_error
from tests.support.files import save, save_external, sha256

MODELS = Path(__file__).resolve().parents[2] / "models"
OPSET = [helper.make_opsetid("", 17)]


def outputs(model_or_path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    source = model_or_path.SerializeToString() if isinstance(model_or_path, onnx.ModelProto) else str(model_or_path)
    return ort.InferenceSession(source, providers=["CPUExecutionProvider"]).run(None, feeds)


def assert_same_outputs(before, after, feeds) -> None:
    for a, b in zip(outputs(before, feeds), outputs(after, feeds), strict=True):
        assert a.dtype == b.dtype and np.array_equal(a, b)


def interface(model: onnx.ModelProto) -> tuple[list[str], list[str]]:
    return [v.name for v in model.graph.input], [v.name for v in model.graph.output]


def if_reading_outer_names() -> onnx.ModelProto:
    """An If whose branches read ``long/outer/h`` and ``long/weight`` from the outer graph, and whose
    branches both bind the local name ``long/branch/local``."""

    def branch(op: str) -> onnx.GraphProto:
        return helper.make_graph(
            [
                helper.make_node(op, ["long/outer/h", "long/weight"], ["long/branch/local"], name=f"long/{op}"),
                helper.make_node("Relu", ["long/branch/local"], ["long/branch/out"], name=f"long/{op}/relu"),
            ],
            f"branch_{op}",
            [],
            [helper.make_tensor_value_info("long/branch/out", TensorProto.FLOAT, [1, 3])],
        )

    nodes = [
        helper.make_node("Mul", ["x", "long/weight"], ["long/outer/h"], name="long/mul", doc_string="model.py:12"),
        helper.make_node("ReduceSum", ["x"], ["long/sum"], name="long/sum", keepdims=0),
        helper.make_node("Greater", ["long/sum", "long/zero"], ["long/cond"], name="long/greater"),
        helper.make_node(
            "If", ["long/cond"], ["y"], name="long/if", then_branch=branch("Add"), else_branch=branch("Sub")
        ),
    ]
    graph = helper.make_graph(
        nodes,
        "if_outer",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
        [
            numpy_helper.from_array(np.array([[0.5, -2.0, 3.0]], np.float32), "long/weight"),
            numpy_helper.from_array(np.array(0.0, np.float32), "long/zero"),
        ],
        doc_string="exported by a test",
        value_info=[helper.make_tensor_value_info("long/outer/h", TensorProto.FLOAT, [1, 3])],
    )
    return helper.make_model(graph, opset_imports=OPSET)


def passthrough_and_initializer_outputs() -> onnx.ModelProto:
    """Output ``x`` is the graph input passed straight through, output ``w`` is an initializer, and
    the graph input is named ``t0``: the first name the renamer would pick. The last node is named
    ``y``, like the output: the node is renamed, the output is not."""
    nodes = [
        helper.make_node("Add", ["t0", "w"], ["some/long/sum"], name="some/add"),
        helper.make_node("Relu", ["some/long/sum"], ["y"], name="y"),  # a node named like an output
    ]
    graph = helper.make_graph(
        nodes,
        "passthrough",
        [helper.make_tensor_value_info("t0", TensorProto.FLOAT, [2])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [2]),
            helper.make_tensor_value_info("t0", TensorProto.FLOAT, [2]),
            helper.make_tensor_value_info("w", TensorProto.FLOAT, [2]),
        ],
        [numpy_helper.from_array(np.array([1.0, -5.0], np.float32), "w")],
    )
    return helper.make_model(graph, opset_imports=OPSET)


def test_base36_counter():
    assert [base36(i) for i in (0, 9, 10, 35, 36, 1295, 1296)] == ["0", "9", "a", "z", "10", "zz", "100"]


def test_method_is_lossless_and_the_base_class_is_not():
    assert ShortNames.lossless is True and onnxshrink.Method.lossless is False


@pytest.mark.parametrize("name", ["cnn", "mlp", "transformer"])
def test_digits_models_get_short_names_and_bit_identical_outputs(name):
    original = onnx.load(MODELS / f"{name}.onnx")
    model = onnx.load(MODELS / f"{name}.onnx")
    stats = run_method("short_names", model).stats
    assert interface(model) == interface(original)
    kept = set(interface(model)[0] + interface(model)[1])
    renamed = onnxshrink.all_names(model) - kept
    assert renamed and all(n[0] in "tn" and len(n) <= 4 for n in renamed), sorted(renamed)[:10]
    assert stats["tensors_renamed"] > 0 and stats["bytes_saved"] == original.ByteSize() - model.ByteSize() > 0
    feeds = {model.graph.input[0].name: np.load(MODELS / f"{name}_eval.npz")["input"][:16]}
    assert_same_outputs(original, model, feeds)
    assert model.metadata_props == original.metadata_props and model.opset_import == original.opset_import


def test_if_branches_read_renamed_outer_names():
    original = if_reading_outer_names()
    model = if_reading_outer_names()
    stats = run_method("short_names", model).stats
    branches = {a.name: a.g for a in model.graph.node[3].attribute}
    outer = {o for n in model.graph.node for o in n.output}
    for g in branches.values():
        reads = {i for n in g.node for i in n.input}
        inits = {t.name for t in model.graph.initializer}
        assert reads - {o for n in g.node for o in n.output} <= outer | inits
        assert not any("long" in n for n in (*reads, g.output[0].name, *(n.name for n in g.node)))
    assert branches["then_branch"].node[0].output == branches["else_branch"].node[0].output  # one injective map
    assert model.graph.value_info[0].name == model.graph.node[0].output[0]
    assert not model.graph.doc_string and not model.graph.node[0].doc_string and stats["doc_strings_cleared"] == 2
    for x in ([[1.0, 2.0, 3.0]], [[-1.0, -2.0, -3.0]]):
        assert_same_outputs(original, model, {"x": np.array(x, np.float32)})


def test_passthrough_initializer_outputs_and_a_t0_input_keep_their_names():
    original = passthrough_and_initializer_outputs()
    model = passthrough_and_initializer_outputs()
    run_method("short_names", model)
    assert interface(model) == (["t0"], ["y", "t0", "w"])
    assert [t.name for t in model.graph.initializer] == ["w"]
    assert model.graph.node[0].output[0] == "t1" and [n.name for n in model.graph.node] == ["n0", "n1"]
    assert_same_outputs(original, model, {"t0": np.array([3.0, 1.0], np.float32)})


def test_keep_and_doc_strings_options():
    model = if_reading_outer_names()
    run_method("short_names", model, {"keep": "[long/outer/h,long/if]", "doc_strings": "false"})
    assert model.graph.node[0].output[0] == "long/outer/h" and model.graph.node[3].name == "long/if"
    assert model.graph.doc_string == "exported by a test" and model.graph.node[0].doc_string == "model.py:12"
    assert "long/weight" not in onnxshrink.all_names(model)


def test_repeat_runs_are_byte_identical_and_a_second_pass_changes_nothing():
    first, second = onnx.load(MODELS / "transformer.onnx"), onnx.load(MODELS / "transformer.onnx")
    run_method("short_names", first)
    run_method("short_names", second)
    assert first.SerializeToString() == second.SerializeToString()
    again = onnx.load_from_string(first.SerializeToString())
    stats = run_method("short_names", again).stats
    assert again.SerializeToString() == first.SerializeToString() and stats["bytes_saved"] == 0


@pytest.mark.parametrize("lazy", [False, True])
def test_cli_on_a_model_with_external_data(cli, tmp_path, monkeypatch, lazy):
    if lazy:  # external data left on disk, read tensor by tensor (docs/large-models.md)
        monkeypatch.setenv("ONNXSHRINK_LAZY_BYTES", "0")
    (tmp_path / "in").mkdir()
    source = save_external(onnx.load(MODELS / "mlp.onnx"), tmp_path / "in" / "m.onnx")
    before = sha256(tmp_path / "in" / "weights.bin")
    out = tmp_path / "out" / "m.onnx"
    result = cli(source, "--plugin", "short_names", "--no-validate", "-o", out, "--report", tmp_path / "r.json", "-q")
    assert result.exit_code == 0, result
    assert sha256(tmp_path / "in" / "weights.bin") == before
    report = json.loads((tmp_path / "r.json").read_text())
    assert "short_names" in json.dumps(report)
    loaded = onnx.load(out, load_external_data=False)
    assert any(t.data_location == TensorProto.EXTERNAL for t in loaded.graph.initializer)
    assert all(t.name.startswith("t") for t in loaded.graph.initializer)
    feeds = {"input": np.load(MODELS / "mlp_eval.npz")["input"][:8]}
    assert_same_outputs(source, out, feeds)


def test_cli_runs_are_byte_identical(cli, tmp_path):
    for name in ("a", "b"):
        result = cli(
            MODELS / "cnn.onnx", "--plugin", "short_names", "--no-validate", "-o", tmp_path / f"{name}.onnx", "-q"
        )
        assert result.exit_code == 0, result
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()


@pytest.mark.parametrize(
    "spec, fragment",
    [
        ("short_names:keep=[no_such_name]", "'no_such_name'"),
        ("short_names:doc_strings=maybe", "'doc_strings'"),
        ("short_names:prefix=x", "unknown option 'prefix'"),
    ],
)
def test_bad_options_exit_2_and_write_nothing(cli, tmp_path, spec, fragment):
    out = tmp_path / "out.onnx"
    result = cli(MODELS / "mlp.onnx", "--plugin", spec, "--no-validate", "-o", out)
    assert_one_line_error(result, 2, "short_names", fragment)
    assert not out.exists()


def test_plugins_lists_it(cli):
    result = cli("plugins", "--json")
    assert result.exit_code == 0, result
    [entry] = [m for m in json.loads(result.stdout)["methods"] if m["name"] == "short_names"]
    assert entry["builtin"] and entry["kind"] == "transform"
    assert {o["name"] for o in entry["options"]} == {"doc_strings", "keep"}


def test_training_info_models_are_left_unchanged():
    model = passthrough_and_initializer_outputs()
    model.training_info.add().algorithm.CopyFrom(helper.make_graph([], "algo", [], []))
    before = model.SerializeToString()
    result = run_method(ShortNames, model)
    assert model.SerializeToString() == before and result.stats["tensors_renamed"] == 0
    assert any("training_info" in w for w in result.warnings)


def test_a_saved_model_keeps_interface_names(tmp_path):
    model = if_reading_outer_names()
    run_method("short_names", model)
    path = save(model, tmp_path / "m.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["x"] and [o.name for o in session.get_outputs()] == ["y"]
