"""Shared fixtures: models on disk, CLI runners (in-process and as a real subprocess)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from onnxshrink.cli import main
from onnxshrink.testing.reference_graphs import REFERENCE_GRAPHS

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def folder_digest(folder: Path) -> dict[str, str]:
    """Name → sha256 of every file in a folder (to assert nothing changed or appeared)."""
    return {p.name: sha256(p) for p in sorted(Path(folder).iterdir()) if p.is_file()}


@pytest.fixture
def write_model(tmp_path):
    """write_model(name_or_proto, filename=None) → path of a reference graph saved under tmp_path."""

    def _write(model, filename: str | None = None) -> Path:
        proto = REFERENCE_GRAPHS[model]() if isinstance(model, str) else model
        path = tmp_path / (filename or f"{model if isinstance(model, str) else 'model'}.onnx")
        onnx.save_model(proto, path)
        return path

    return _write


class CliResult:
    def __init__(self, code: int, stdout: str, stderr: str):
        self.exit_code, self.stdout, self.stderr = code, stdout, stderr

    def __repr__(self) -> str:  # shown by pytest on failure
        return f"CliResult(exit={self.exit_code}, stdout={self.stdout[-2000:]!r}, stderr={self.stderr[-2000:]!r})"


@pytest.fixture
def cli():
    """Run the CLI in-process: cli('model.onnx', '--plugin', 'weight_prune')."""

    def _run(*args: str) -> CliResult:
        result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
        return CliResult(result.exit_code, result.stdout, result.stderr)

    return _run


@pytest.fixture
def cli_subprocess():
    """Run ``python -m onnxshrink`` as a real process (fresh plugin loading, real env)."""

    def _run(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: int = 300) -> CliResult:
        full_env = {**os.environ, **(env or {})}
        proc = subprocess.run(
            [sys.executable, "-m", "onnxshrink", *map(str, args)],
            capture_output=True,
            text=True,
            env=full_env,
            cwd=cwd,
            timeout=timeout,
        )
        return CliResult(proc.returncode, proc.stdout, proc.stderr)

    return _run


def opset10_matmul(folder: Path) -> tuple[Path, Path]:
    """An opset-10 model with one 64x32 MatMul weight and 64 feeds of data for it: (model, data)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((64, 32)).astype(np.float32), "W")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 32])], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 10)]), folder / "m10.onnx")
    np.savez(folder / "x.npz", x=rng.standard_normal((64, 64)).astype(np.float32))
    return folder / "m10.onnx", folder / "x.npz"
