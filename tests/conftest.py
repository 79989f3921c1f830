"""Fixtures every test folder shares: the installed methods, models on disk, CLI runners (in-process and as
a real subprocess). Helpers that tests import are in tests/support/."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner

from onnxshrink.cli import main
from onnxshrink.plugin.registry import load_registry
from onnxshrink.testing.reference_graphs import REFERENCE_GRAPHS
from tests.support.cli import CliResult


@pytest.fixture(scope="module")
def registry():
    """The installed methods (built-ins and the example plugin), loaded once per test module."""
    return load_registry()


@pytest.fixture
def write_model(tmp_path):
    """write_model(name_or_proto, filename=None) → path of a reference graph saved under tmp_path."""

    def _write(model, filename: str | None = None) -> Path:
        proto = REFERENCE_GRAPHS[model]() if isinstance(model, str) else model
        path = tmp_path / (filename or f"{model if isinstance(model, str) else 'model'}.onnx")
        onnx.save_model(proto, path)
        return path

    return _write


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
