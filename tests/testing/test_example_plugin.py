"""The example plugin package (examples/onnxshrink-fp16-example), installed, run through the real CLI."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from onnxshrink.plugin.registry import load_registry
from tests.support.files import MODELS, ROOT, sha256

EXAMPLE = ROOT / "examples" / "onnxshrink-fp16-example"
DISTRIBUTION = "onnxshrink-fp16-example"
INSTALL = "make install (or: .venv/bin/pip install --no-deps -e examples/onnxshrink-fp16-example)"
CLI = Path(sys.executable).with_name("onnxshrink")


@pytest.fixture(scope="module")
def example():
    """The installed example module; fails (not skips) when it is missing, since `make test` installs it."""
    try:
        metadata.distribution(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        pytest.fail(f"the example plugin {DISTRIBUTION} is not installed in this environment; run {INSTALL}")
    module = importlib.import_module("onnxshrink_fp16_example")
    if not Path(module.__file__).resolve().is_relative_to(EXAMPLE):
        pytest.fail(f"{DISTRIBUTION} is installed from {module.__file__}, not from this checkout; run {INSTALL}")
    return module


def run_cli(*args, env=None, timeout=300):
    """The installed ``onnxshrink`` console script as a real process, without inherited ONNXSHRINK_* settings."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ONNXSHRINK_")}
    return subprocess.run(
        [CLI, *map(str, args)], capture_output=True, text=True, env={**clean, **(env or {})}, timeout=timeout
    )


def test_hook_register_methods(example):
    registered = []
    example.register_methods(registered.append)
    assert registered == [example.Fp16Storage]

    info = load_registry().get("fp16_storage")
    assert info.cls is example.Fp16Storage
    assert (info.plugin, info.distribution, info.version, info.builtin) == (
        "fp16_storage",
        DISTRIBUTION,
        example.__version__,
        False,
    )


def test_plugins_command_shows_where_it_came_from(example):
    result = run_cli("plugins", "--json")
    assert result.returncode == 0, result.stderr
    listing = json.loads(result.stdout)
    [method] = [m for m in listing["methods"] if m["name"] == "fp16_storage"]
    assert (method["distribution"], method["version"], method["builtin"], method["kind"]) == (
        DISTRIBUTION,
        "0.1.0",
        False,
        "transform",
    )
    assert [(o["name"], o["type"], o["default"]) for o in method["options"]] == [
        ("min_size", "int", 64),
        ("max_error", "float", 0.001),
        ("keep", "list", None),
    ]
    assert listing["errors"] == []


@pytest.mark.parametrize("name", ["cnn", "mlp", "transformer"])
def test_cli_halves_each_shipped_model_and_keeps_its_predictions(example, tmp_path, name):
    source, data = MODELS / f"{name}.onnx", MODELS / f"{name}_eval.npz"
    assert source.exists() and data.exists(), f"models/{name}.onnx and its eval data are missing"
    digest = sha256(source)
    out, report = tmp_path / f"{name}.fp16.onnx", tmp_path / "report.json"

    result = run_cli(
        source, "--plugin", "fp16_storage", "-o", out, "--data", data, "--report", report, "--repeats", "3", "--quiet"
    )

    assert result.returncode == 0, result.stderr
    assert sha256(source) == digest
    [step] = json.loads(report.read_text())["steps"]
    stats = step["stats"]
    assert step["plugin"] == "fp16_storage" and stats["converted_tensors"] > 0 and stats["skipped"] == []
    ratio = out.stat().st_size / source.stat().st_size
    assert ratio < 0.56, f"{name}: file ratio {ratio:.3f}"  # measured 0.51-0.55
    with np.load(data) as arrays:
        inputs = arrays["input"]
    expected = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"]).run(None, {"input": inputs})[0]
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"input": inputs})[0]
    cosine = float(np.sum(expected * got) / (np.linalg.norm(expected) * np.linalg.norm(got)))
    assert cosine > 0.9999, f"{name}: cosine {cosine}"
    assert np.mean(expected.argmax(axis=1) == got.argmax(axis=1)) >= 0.99
    assert all(
        t.data_type == onnx.TensorProto.FLOAT16 for t in onnx.load(out).graph.initializer if t.name.endswith("_fp16")
    )


def test_block_list_and_allow_list_switch_it_off(example, write_model, tmp_path):
    model = write_model("mlp")
    blocked = run_cli(
        model, "--plugin", "fp16_storage", "-o", tmp_path / "out.onnx", env={"ONNXSHRINK_BLOCK_PLUGINS": "fp16_storage"}
    )
    assert blocked.returncode == 2
    assert (
        blocked.stderr.strip().splitlines() == [blocked.stderr.strip()]
        and "unknown plugin 'fp16_storage'" in blocked.stderr
    )
    assert not (tmp_path / "out.onnx").exists()

    def listed(env):
        result = run_cli("plugins", "--json", env=env)
        assert result.returncode == 0, result.stderr
        return {m["name"] for m in json.loads(result.stdout)["methods"]}

    assert "fp16_storage" not in listed({"ONNXSHRINK_LOAD_PLUGINS": ""})
    assert "fp16_storage" in listed({"ONNXSHRINK_LOAD_PLUGINS": DISTRIBUTION})
    assert "weight_prune" in listed({"ONNXSHRINK_LOAD_PLUGINS": ""})  # built-ins always load


def test_trace_names_the_example_plugin(example):
    result = run_cli("plugins", env={"ONNXSHRINK_TRACE_PLUGINS": "1"})
    assert result.returncode == 0, result.stderr
    assert "onnxshrink trace: register_methods -> fp16_storage" in result.stderr


def test_bad_option_is_a_one_line_usage_error(example, write_model, tmp_path):
    result = run_cli(write_model("mlp"), "--plugin", "fp16_storage:max_error=lots", "-o", tmp_path / "out.onnx")
    assert result.returncode == 2
    assert result.stderr.strip() == "error: plugin 'fp16_storage': option 'max_error' expects float (got 'lots')"


def test_the_examples_own_tests_pass(example):
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=EXAMPLE,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "failed" not in result.stdout
