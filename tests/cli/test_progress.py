"""Progress: long steps that count bytes show a throughput and leave a one-line summary."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

import onnxshrink.cli.console as console_module
from onnxshrink import Context
from onnxshrink.cli.console import rich_progress


def test_bytes_progress_leaves_a_throughput_summary(monkeypatch):
    monkeypatch.setattr(console_module, "SUMMARY_AFTER_S", 0.0)
    out = io.StringIO()
    with rich_progress(Console(file=out, width=200), "saving", 3 * 2**20, "B") as task:
        for _ in range(3):
            task.advance(2**20)
    line = out.getvalue().strip().splitlines()[-1]
    assert line.startswith("saving: 3.00 MiB in ") and line.endswith(" MB/s")


def test_counted_progress_and_short_steps_leave_nothing():
    out = io.StringIO()
    with rich_progress(Console(file=out, width=200), "layers", 2) as task:
        task.advance()
    with rich_progress(Console(file=out, width=200), "saving", 10, "B") as task:
        task.advance(10)  # well under SUMMARY_AFTER_S
    assert out.getvalue() == ""


def test_context_progress_passes_the_unit_and_refuses_others():
    seen = []

    def factory(description, total, unit=""):
        seen.append((description, total, unit))
        return rich_progress(Console(file=io.StringIO()), description, total, unit)

    context = Context(plugin="demo", progress=factory)
    with context.progress("pruning", total=8, unit="B") as task:
        task.advance(8)
    assert seen == [("demo: pruning", 8, "B")]
    with pytest.raises(ValueError, match="'MB'"):
        context.progress("x", unit="MB")


def test_cli_shows_throughput_of_a_long_step(cli, tmp_path, monkeypatch):
    monkeypatch.setattr(console_module, "SUMMARY_AFTER_S", 0.0)
    result = cli(
        "models/mlp.onnx",
        "--plugin",
        "gptq",
        "--data",
        "models/mlp_calib.npz",
        "--no-validate",
        "-o",
        tmp_path / "m.onnx",
    )
    assert result.exit_code == 0, result
    assert any(
        line.startswith("gptq: quantizing 3 layers: ") and line.endswith(" MB/s") for line in result.stderr.splitlines()
    ), result


@pytest.mark.parametrize(
    ("plugin", "step"),
    [
        ("weight_prune:sparsity=0.5", "weight_prune: pruning 16 tensors"),
        ("int_quant:mode=weights,bits=4", "int_quant: quantizing weights"),
    ],
)
def test_large_model_steps_and_saving_show_throughput(cli, tmp_path, monkeypatch, plugin, step):
    from onnxshrink.testing.large_models import make_mlp_stack

    monkeypatch.setattr(console_module, "SUMMARY_AFTER_S", 0.0)
    monkeypatch.setenv("ONNXSHRINK_LAZY_BYTES", "0")  # the on-disk path, as for a model of several GB
    (tmp_path / "in").mkdir()
    model = make_mlp_stack(tmp_path / "in" / "m.onnx", 1 << 20, width=64)
    result = cli(model, "--plugin", plugin, "--no-validate", "-o", tmp_path / "out" / "m.onnx")
    assert result.exit_code == 0, result
    lines = result.stderr.splitlines()
    for prefix in (step, "saving m.onnx"):
        assert any(line.startswith(prefix + ": ") and line.endswith(" MB/s") for line in lines), (prefix, result)
