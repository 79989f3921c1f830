"""Structured pruning on every model in models/, in one run: weight_prune structured=channel at 25, 50
and 75% of the channels, without and with least-squares reconstruction, activation_prune and
layer_prune. Per row: parameter and file-size ratio against the float model, CPU latency ratio
(baseline and candidate interleaved A B A B after warm-up, 1 thread, on 1 and on 32 eval inputs) and
accuracy on the labels of models/<name>_eval.npz. Calibration (reconstruction, activation statistics,
block scores) uses models/<name>_calib.npz.

    python benchmarks/bench_prune.py            # every model
    python benchmarks/bench_prune.py cnn        # some of them
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from onnxshrink.plugin.method import PluginSpec
from onnxshrink.plugin.registry import load_registry
from onnxshrink.run.pipeline import prepare_steps, run_steps
from onnxshrink.toolkit.runtime import cpu_session
from onnxshrink.validate.latency import interleave

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
LATENCY_BATCHES = (1, 32)

CANDIDATES: list[tuple[str, str, dict[str, str]]] = [
    *(
        (
            f"channels {int(s * 100)}%{' + reconstruct' if rec else ''}",
            "weight_prune",
            {"structured": "channel", "sparsity": str(s), "reconstruct": str(rec).lower()},
        )
        for rec in (False, True)
        for s in (0.25, 0.5, 0.75)
    ),
    ("dead channels (|a| = 0)", "activation_prune", {}),
    (
        "quietest 25% (any group) + reconstruct",
        "activation_prune",
        {"ratio": "0.25", "after": "any", "reconstruct": "true"},
    ),
    ("1 residual block (influence)", "layer_prune", {"n": "1"}),
]


def latency_ratio(baseline: onnx.ModelProto, candidate: onnx.ModelProto, feed: dict[str, np.ndarray]) -> float:
    """Median candidate time / median baseline time, calls interleaved A B A B after warm-up."""
    a, b = cpu_session(baseline), cpu_session(candidate)
    times_a, times_b = interleave(
        lambda: a.run(None, feed), lambda: b.run(None, feed), warmup=10, repeats=60, min_time_s=0.4, max_repeats=2000
    )
    return statistics.median(times_b) / statistics.median(times_a)


def accuracy(model: onnx.ModelProto, inputs: np.ndarray, labels: np.ndarray) -> float:
    logits = cpu_session(model).run(None, {"input": inputs})[0]
    return float(np.mean(np.argmax(logits, axis=-1) == labels))


def parameters(model: onnx.ModelProto) -> int:
    return sum(int(np.prod(t.dims)) for t in model.graph.initializer)


def bench_model(name: str, registry) -> list[dict]:
    model = onnx.load(MODELS / f"{name}.onnx")
    evaluation = np.load(MODELS / f"{name}_eval.npz")
    calibration = [{"input": np.load(MODELS / f"{name}_calib.npz")["input"]}]
    latency_feeds = {n: {"input": evaluation["input"][:n]} for n in LATENCY_BATCHES}
    base = {
        "bytes": model.ByteSize(),
        "params": parameters(model),
        "accuracy": accuracy(model, evaluation["input"], evaluation["labels"]),
    }
    rows = [
        {
            "model": name,
            "method": "float32 baseline",
            **base,
            "latency": {n: 1.0 for n in LATENCY_BATCHES},
            "seconds": 0.0,
            "note": "",
        }
    ]
    for label, method, options in CANDIDATES:
        candidate = onnx.ModelProto()
        candidate.CopyFrom(model)
        started = time.perf_counter()
        steps = prepare_steps([PluginSpec(method, options)], registry)
        [result] = run_steps(candidate, steps, seed=0, calibration=lambda: calibration, calibration_is_synthetic=False)
        seconds = time.perf_counter() - started
        rows.append(
            {
                "model": name,
                "method": f"{method}: {label}",
                "bytes": candidate.ByteSize(),
                "params": parameters(candidate),
                "latency": {n: latency_ratio(model, candidate, feed) for n, feed in latency_feeds.items()},
                "accuracy": accuracy(candidate, evaluation["input"], evaluation["labels"]),
                "seconds": seconds,
                "note": _note(result.stats),
            }
        )
    return rows


def _note(stats: dict) -> str:
    if "removed_blocks" in stats:
        return f"removed {', '.join(stats['removed_blocks']) or 'nothing'}"
    if "channels_removed" in stats:
        return f"{stats['channels_removed']}/{stats['channels']} channels, {len(stats['declined'])} groups declined"
    return ""


def print_table(rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    headers = [
        "model",
        "method",
        "params ratio",
        "size ratio",
        *(f"latency ratio, batch {n}" for n in LATENCY_BATCHES),
        "accuracy",
        "Δ accuracy (pts)",
        "prune s",
        "note",
    ]
    base = {r["model"]: r for r in rows if r["method"] == "float32 baseline"}
    table = Table(
        title=f"structured pruning (onnxruntime {ort.__version__}, CPU EP, 1 thread; "
        "latency = candidate / float32 median, interleaved)"
    )
    for h in headers:
        table.add_column(h, justify="left" if h in ("model", "method", "note") else "right")
    for r in rows:
        b = base[r["model"]]
        table.add_row(
            r["model"],
            r["method"],
            f"{r['params'] / b['params']:.3f}",
            f"{r['bytes'] / b['bytes']:.3f}",
            *(f"{r['latency'][n]:.2f}x" for n in LATENCY_BATCHES),
            f"{100 * r['accuracy']:.2f}%",
            f"{100 * (r['accuracy'] - b['accuracy']):+.2f}",
            f"{r['seconds']:.1f}",
            r["note"],
        )
    Console(width=220).print(table)


def main(argv: list[str] | None = None) -> None:
    wanted = list(argv or [])
    names = sorted(p.stem for p in MODELS.glob("*.onnx") if (MODELS / f"{p.stem}_eval.npz").exists())
    names = [n for n in names if not wanted or n in wanted]
    if not names:
        print(f"no model with an _eval.npz in {MODELS}")
        return
    started = time.perf_counter()
    registry = load_registry()
    rows = [row for name in names for row in bench_model(name, registry)]
    print_table(rows)
    print(f"({len(names)} models, {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main(sys.argv[1:])
