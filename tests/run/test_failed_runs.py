"""Failed runs leave nothing behind and still report (issue 15, items 2, 3 and 6), through the real CLI.

- exit 2 or 3: nothing at the output path, a file that was there before is untouched, a folder the run
  created is gone; the reports asked for are written with ``error: {exit_code, message}``;
- exit 1 (a gate failed) keeps the candidate;
- onnxruntime's own log lines (colour codes, ``[E:onnxruntime:...]``) never reach stderr, --quiet or not;
- a method that changes a declared output (dtype, rank, a fixed dim), or the tensor behind it, is a
  plugin failure: exit 3 naming the plugin and the output.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxshrink
import onnxshrink.run.shrink as shrink_module
from onnxshrink.errors import ExitCode
from onnxshrink.plugin.registry import MethodInfo, load_registry
from tests.support.cli import assert_one_line_error
from tests.support.files import save, snapshot

MLP = "models/mlp.onnx"
MLP_EVAL = "models/mlp_eval.npz"


def reshape_model() -> onnx.ModelProto:
    """x [n, 6] @ W [6, 4] then Reshape to [7, -1]: loads, but no batch of 6-vectors runs."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Reshape", ["h", "s"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [7, "m"])],
        [
            numpy_helper.from_array(np.ones((6, 4), np.float32), "w"),
            numpy_helper.from_array(np.array([7, -1], np.int64), "s"),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def reports(tmp_path):
    folder = tmp_path / "reports"
    return folder / "r.json", folder / "r.xml", folder / "r.md"


def report_args(paths) -> list:
    json_path, junit, markdown = paths
    return ["--report", json_path, "--junit", junit, "--markdown", markdown]


def assert_error_reports(paths, code: int, fragment: str) -> None:
    json_path, junit, markdown = paths
    error = json.loads(json_path.read_text())["error"]
    assert error["exit_code"] == code and fragment in error["message"]
    case = ET.parse(junit).getroot().find("testsuite/testcase/error")
    assert case is not None and fragment in case.get("message") and case.get("type") == f"exit {code}"
    assert f"ERROR (exit {code})" in markdown.read_text()


def test_data_that_does_not_fit_exit_2_keeps_the_old_output_and_reports(cli, tmp_path):
    model = save(reshape_model(), tmp_path / "m.onnx")
    np.savez(tmp_path / "d.npz", x=np.ones((3, 6), np.float32))
    out = tmp_path / "out.onnx"
    out.write_bytes(b"the previous release")
    paths = reports(tmp_path)
    result = cli(model, "--plugin", "weight_prune", "-o", out, "--data", tmp_path / "d.npz", *report_args(paths))
    assert_one_line_error(result, 2, "does not run on the data", "Reshape")
    assert out.read_bytes() == b"the previous release"
    assert_error_reports(paths, 2, "does not run on the data")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "d.npz",
        "m.onnx",
        "out.onnx",
        "reports",
    ]  # no staging folder left


def test_failure_after_saving_leaves_nothing(cli, tmp_path, monkeypatch):
    """Validation failing once the candidate is saved (exit 2): the candidate is not at the output path,
    the folder created for it is removed, and the report says why."""

    def fails(*args, **kwargs):
        raise onnxshrink.UsageError("validation refused the data (test)")

    monkeypatch.setattr(shrink_module, "validate", fails)
    out = tmp_path / "new" / "deeper" / "out.onnx"
    paths = reports(tmp_path)
    before = snapshot(tmp_path)
    result = cli(MLP, "--plugin", "weight_prune", "-o", out, "--data", MLP_EVAL, "--quiet", *report_args(paths))
    assert_one_line_error(result, 2, "validation refused the data (test)")
    assert not (tmp_path / "new").exists()
    assert {k: v for k, v in snapshot(tmp_path).items() if not k.startswith("reports")} == before
    assert_error_reports(paths, 2, "validation refused the data (test)")
    report = json.loads(paths[0].read_text())
    assert report["steps"][0]["plugin"] == "weight_prune"  # what ran before the failure is still reported
    assert report["output"]["path"] == str(out) and report["output"]["files"] == []  # nothing written


def test_plugin_failure_exit_3_reports_and_leaves_nothing(cli, tmp_path, monkeypatch):
    class Breaks(onnxshrink.Method):
        """Raise inside apply (test)."""

        name, kind = "test_breaks", "transform"

        def apply(self, model, options, context):
            raise RuntimeError("broken on purpose")

    register(monkeypatch, Breaks)
    paths = reports(tmp_path)
    out = tmp_path / "out.onnx"
    result = cli(MLP, "--plugin", "test_breaks", "-o", out, "--no-validate", *report_args(paths))
    assert_one_line_error(result, 3, "plugin 'test_breaks'", "broken on purpose")
    assert result.exit_code is ExitCode.FAILURE
    assert not out.exists()
    assert_error_reports(paths, 3, "broken on purpose")


def test_usage_error_before_the_run_still_writes_the_reports(cli, tmp_path):
    paths = reports(tmp_path)
    result = cli(MLP, "--plugin", "weight_prune:sparsity=2", "-o", tmp_path / "out.onnx", *report_args(paths))
    assert_one_line_error(result, 2, "sparsity")
    assert result.exit_code is ExitCode.USAGE
    assert_error_reports(paths, 2, "sparsity")
    assert not (tmp_path / "out.onnx").exists()


def test_gate_failure_exit_1_keeps_the_candidate(cli, tmp_path):
    out = tmp_path / "out.onnx"
    paths = reports(tmp_path)
    result = cli(
        MLP,
        "--plugin",
        "weight_prune",
        "-o",
        out,
        "--data",
        MLP_EVAL,
        "--repeats",
        "2",
        "--gate",
        "size_ratio<=0.01",
        *report_args(paths),
    )
    assert result.exit_code is ExitCode.GATE_FAILED, result
    onnx.checker.check_model(str(out))
    report = json.loads(paths[0].read_text())
    assert "error" not in report and report["gate"]["passed"] is False and report["output"]["files"] == [str(out)]


@pytest.mark.parametrize("quiet", [[], ["--quiet"]])
def test_no_onnxruntime_log_lines_on_stderr(cli_subprocess, tmp_path, quiet):
    """A model that fails inside onnxruntime: the only stderr line is onnxshrink's own error."""
    model = save(reshape_model(), tmp_path / "m.onnx")
    np.savez(tmp_path / "d.npz", x=np.ones((3, 6), np.float32))
    for extra in (["--data", tmp_path / "d.npz"], []):  # user data, then synthetic inputs (the search)
        result = cli_subprocess(model, "--plugin", "int_quant:mode=static", "-o", tmp_path / "o.onnx", *extra, *quiet)
        assert (
            "\x1b[" not in result.stderr
            and "[E:onnxruntime" not in result.stderr
            and "[W:onnxruntime" not in result.stderr
        ), result
        assert_one_line_error(result, 2, "Reshape")
        assert not (tmp_path / "o.onnx").exists()


# ------------------------------------------------------------------------------ changed outputs


def register(monkeypatch, *classes) -> None:
    """Methods defined in a test, registered in a fresh registry that the CLI then uses."""
    registry = load_registry()
    for cls in classes:
        registry.methods[cls.name] = MethodInfo(cls, "tests", "tests", "0")
    monkeypatch.setattr(shrink_module, "default_registry", lambda: registry)


def _reroute_output(model: onnx.ModelProto, op: str, *extra: str, **attrs) -> onnx.ValueInfoProto:
    out = model.graph.output[0]
    for node in model.graph.node:
        node.output[:] = ["before_edit" if o == out.name else o for o in node.output]
    model.graph.node.append(helper.make_node(op, ["before_edit", *extra], [out.name], **attrs))
    return out


class SlicesOutput(onnxshrink.Method):
    """Keep 5 of the 10 logits, declaration untouched (test)."""

    name, kind = "test_slices_output", "transform"

    def apply(self, model, options, context):
        for name, values in (("s0", [0]), ("s5", [5]), ("ax1", [1])):
            model.graph.initializer.append(numpy_helper.from_array(np.array(values, np.int64), name))
        _reroute_output(model, "Slice", "s0", "s5", "ax1")
        return {}


class DeclaresFewerLogits(SlicesOutput):
    """Keep 5 of the 10 logits and declare it (test)."""

    name = "test_declares_fewer"

    def apply(self, model, options, context):
        super().apply(model, options, context)
        out = model.graph.output[0]
        out.CopyFrom(helper.make_tensor_value_info(out.name, TensorProto.FLOAT, ["batch", 5]))
        return {}


class CastsOutput(onnxshrink.Method):
    """Make the output float16 and declare it (test)."""

    name, kind = "test_casts_output", "transform"

    def apply(self, model, options, context):
        _reroute_output(model, "Cast", to=TensorProto.FLOAT16).type.tensor_type.elem_type = TensorProto.FLOAT16
        return {}


@pytest.mark.parametrize(
    "method, fragments",
    [
        (SlicesOutput, ["changed graph output 'logits'", "dim 1 is now 5, the model declares 10"]),
        (DeclaresFewerLogits, ["graph output 'logits' declared dim 1 10 -> 5"]),
        (CastsOutput, ["graph output 'logits' type FLOAT -> FLOAT16"]),
    ],
)
def test_changed_output_is_a_plugin_failure(cli, tmp_path, monkeypatch, method, fragments):
    register(monkeypatch, method)
    paths = reports(tmp_path)
    result = cli(
        MLP, "--plugin", method.name, "-o", tmp_path / "out.onnx", "--data", MLP_EVAL, "--quiet", *report_args(paths)
    )
    assert_one_line_error(result, 3, f"plugin {method.name!r}", *fragments)
    assert not (tmp_path / "out.onnx").exists()
    assert_error_reports(paths, 3, fragments[0])


def test_an_output_dim_that_becomes_fixed_is_not_a_change(cli, tmp_path, monkeypatch):
    """Shape inference filling in a dynamic dim (batch -> 1) keeps the interface."""

    class FixesBatch(onnxshrink.Method):
        """Declare the batch dim of the output as 1 (test)."""

        name, kind = "test_fixes_batch", "transform"

        def apply(self, model, options, context):
            out = model.graph.output[0]
            out.CopyFrom(helper.make_tensor_value_info(out.name, TensorProto.FLOAT, [1, 10]))
            return {}

    register(monkeypatch, FixesBatch)
    result = cli(MLP, "--plugin", "test_fixes_batch", "-o", tmp_path / "out.onnx", "--no-validate")
    assert result.exit_code == 0, result
