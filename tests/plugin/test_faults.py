"""Fault tolerance (issue 8, part 2): deliberately broken methods, installed as a real third-party
distribution (a ``.dist-info`` on PYTHONPATH) and run through the real command in a subprocess.

Every fault must be caught and named (the plugin, and the node or tensor when there is one), on one
line, without a traceback, with nothing written: no output, no temporary file, the input unchanged.
A plugin failure is exit 3; a plugin's own usage error stays exit 2; an interrupt is exit 130.
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from onnxshrink.testing import reference_graphs as rg
from tests.support.cli import CliResult, assert_one_line_error
from tests.support.files import save, snapshot
from tests.support.plugins import make_distribution

FAULTY_PLUGIN = '''
import sys

import numpy as np
import onnx
from onnx import helper, numpy_helper

import onnxshrink


class Fault(onnxshrink.Method):
    """A deliberately broken method (tests only)."""

    kind = "transform"


class Raises(Fault):
    """Raise in apply."""

    name = "fault_raises"

    def apply(self, model, options, context):
        raise RuntimeError("deliberate failure inside apply")


class Exits(Fault):
    """Call sys.exit(0) in apply: must not end the run with success."""

    name = "fault_exits"

    def apply(self, model, options, context):
        sys.exit(0)


class Interrupted(Fault):
    """The user presses Ctrl-C while the method runs."""

    name = "fault_interrupted"

    def apply(self, model, options, context):
        raise KeyboardInterrupt


class RefusesInput(Fault):
    """Refuse the model with a usage error of its own."""

    name = "fault_refuses"

    def apply(self, model, options, context):
        raise onnxshrink.UsageError("plugin 'fault_refuses': this model needs --data with real inputs")


class Dangling(Fault):
    """Return a graph whose first node reads a tensor nothing produces."""

    name = "fault_dangling"

    def apply(self, model, options, context):
        model.graph.node[0].input[0] = "no_such_tensor"
        return {}


class Cycle(Fault):
    """Return a graph with a cycle (the first node reads the last node's output)."""

    name = "fault_cycle"

    def apply(self, model, options, context):
        model.graph.node[0].input[0] = model.graph.node[-1].output[0]
        return {}


class WeightShape(Fault):
    """Corrupt a shape: the weight of the first MatMul/Gemm becomes 3x5."""

    name = "fault_weight_shape"

    def apply(self, model, options, context):
        weight = onnxshrink.weight_tensors(model)[0]
        weight.proto.CopyFrom(numpy_helper.from_array(np.ones((3, 5), np.float32), weight.name))
        return {}


class OutputShape(Fault):
    """Corrupt a shape: the graph output declares rank 3 for a rank-2 tensor."""

    name = "fault_output_shape"

    def apply(self, model, options, context):
        output = model.graph.output[0]
        output.CopyFrom(helper.make_tensor_value_info(output.name, output.type.tensor_type.elem_type, ["batch", 2, 5]))
        return {}


class UnknownOp(Fault):
    """Insert an op onnxruntime has no kernel for (onnx.checker accepts an unknown domain)."""

    name = "fault_unknown_op"

    def apply(self, model, options, context):
        first = model.graph.node[0]
        first.output[0], old = "renamed_by_fault", first.output[0]
        mystery = helper.make_node("Mystery", ["renamed_by_fault"], [old], name="mystery", domain="com.fault")
        model.graph.node.insert(1, mystery)
        model.opset_import.append(helper.make_opsetid("com.fault", 1))
        return {}


class DuplicateNames(Fault):
    """Give every node the same name: onnx.checker accepts it, onnxruntime refuses to load."""

    name = "fault_duplicate_names"

    def apply(self, model, options, context):
        for node in model.graph.node:
            node.name = "dup"
        return {}


class BadStats(Fault):
    """Return stats that are not JSON."""

    name = "fault_bad_stats"

    def apply(self, model, options, context):
        return {"when": object()}


class NotADict(Fault):
    """Return a list instead of a dict of stats."""

    name = "fault_not_a_dict"

    def apply(self, model, options, context):
        return ["pruned"]


@onnxshrink.hookimpl
def register_methods(register):
    for cls in (
        Raises, Exits, Interrupted, RefusesInput, Dangling, Cycle,
        WeightShape, OutputShape, UnknownOp, DuplicateNames, BadStats, NotADict,
    ):
        register(cls)
'''

# (plugins in the chain, exit code, fragments of the one-line message)
FAULTS = {
    "raises": (["fault_raises"], 3, ["plugin 'fault_raises'", "RuntimeError", "deliberate failure inside apply"]),
    "calls sys.exit(0)": (["fault_exits"], 3, ["plugin 'fault_exits'", "SystemExit"]),
    "interrupted": (["fault_interrupted"], 130, ["interrupted"]),
    "refuses the input": (["fault_refuses"], 2, ["plugin 'fault_refuses'", "needs --data"]),
    "dangling input": (["fault_dangling"], 3, ["plugin 'fault_dangling'", "invalid model", "no_such_tensor"]),
    "cycle": (["fault_cycle"], 3, ["plugin 'fault_cycle'", "cycle"]),
    "corrupt weight shape": (["fault_weight_shape"], 3, ["plugin 'fault_weight_shape'", "invalid model", "fc1"]),
    "corrupt output shape": (
        ["fault_output_shape"],
        3,
        ["plugin 'fault_output_shape'", "changed the model's interface", "'logits'"],
    ),
    "op onnxruntime cannot load": (
        ["fault_unknown_op"],
        3,
        ["plugin 'fault_unknown_op'", "onnxruntime cannot load", "Mystery"],
    ),
    "names onnxruntime refuses": (
        ["fault_duplicate_names"],
        3,
        ["plugin 'fault_duplicate_names'", "onnxruntime cannot load", "dup"],
    ),
    "stats not JSON": (["fault_bad_stats"], 3, ["plugin 'fault_bad_stats'", "JSON"]),
    "stats not a dict": (["fault_not_a_dict"], 3, ["plugin 'fault_not_a_dict'", "dict"]),
    # the second step breaks what the first step produced: the failure is the second step's
    "second step breaks the model": (
        ["weight_prune:sparsity=0.5", "fault_unknown_op"],
        3,
        ["plugin 'fault_unknown_op'", "onnxruntime cannot load"],
    ),
    "second step raises": (["weight_prune:sparsity=0.5", "fault_raises"], 3, ["plugin 'fault_raises'"]),
}


@pytest.fixture(scope="module")
def fault_runs(tmp_path_factory):
    """Every case of FAULTS, run as ``python -m onnxshrink`` (what the ``cli_subprocess`` fixture runs),
    concurrently to keep the suite fast: case -> (result, snapshot before, snapshot after, model folder)."""
    site = tmp_path_factory.mktemp("site")
    make_distribution(site, "onnxshrink-faults", "onnxshrink_faults", FAULTY_PLUGIN)
    env = {**os.environ, "PYTHONPATH": str(site)}

    def run(case: str):
        folder = tmp_path_factory.mktemp("fault")
        model = save(rg.mlp(), folder / "model.onnx")
        before = snapshot(folder)
        plugins = [arg for name in FAULTS[case][0] for arg in ("--plugin", name)]
        command = [
            sys.executable,
            "-m",
            "onnxshrink",
            str(model),
            *plugins,
            "-o",
            str(folder / "out.onnx"),
            "--no-validate",
        ]
        proc = subprocess.run(command, capture_output=True, text=True, env=env, cwd=folder, timeout=300)
        return case, (CliResult(proc.returncode, proc.stdout, proc.stderr), before, snapshot(folder))

    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        return dict(pool.map(run, FAULTS))


@pytest.mark.parametrize("case", list(FAULTS))
def test_fault_is_caught_named_and_nothing_is_written(fault_runs, case):
    chain, code, fragments = FAULTS[case]
    result, before, after = fault_runs[case]
    message = assert_one_line_error(result, code, *fragments)
    if chain[0] == "weight_prune":
        assert "weight_prune" not in message  # the step that broke the model is named, not the one before
    assert after == before


def test_broken_plugin_in_process_gives_the_same_answer(cli, tmp_path, monkeypatch):
    """The in-process runner agrees with the subprocess (the registry is built afresh for it)."""
    from onnxshrink.plugin.registry import default_registry

    site = tmp_path / "site"
    site.mkdir()
    make_distribution(site, "onnxshrink-faults", "onnxshrink_faults", FAULTY_PLUGIN)
    monkeypatch.syspath_prepend(str(site))
    default_registry.cache_clear()
    try:
        model = save(rg.mlp(), tmp_path / "model.onnx")
        before = snapshot(tmp_path)
        result = cli(model, "--plugin", "fault_dangling", "-o", tmp_path / "out.onnx", "--no-validate")
        assert_one_line_error(result, 3, "plugin 'fault_dangling'", "no_such_tensor")
        assert snapshot(tmp_path) == before
    finally:
        default_registry.cache_clear()
