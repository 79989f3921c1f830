"""int_quant against onnxruntime.quantization on every model in models/, in one run.

For each model: the float baseline, onnxshrink int_quant (int8 storage, weights, dynamic, static,
int4 weights, auto) and onnxruntime's quantize_dynamic, quantize_static (QDQ, per-channel, after
quant_pre_process) and MatMulNBits 4-bit, side by side: file size, CPU latency ratio against the float
model (interleaved A B A B after warm-up, 1 thread, on 1 and on 32 eval inputs) and accuracy on the
labels of models/<name>_eval.npz. Calibration uses models/<name>_calib.npz for both tools.

    python benchmarks/bench_quant.py            # every model
    python benchmarks/bench_quant.py cnn mlp    # some of them
"""

from __future__ import annotations

import contextlib
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
LATENCY_BATCHES = (1, 32)
CALIB_BATCH = 16
INT4_BLOCK = 32


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def latency_ratio(baseline: onnx.ModelProto, candidate: onnx.ModelProto, feed: dict[str, np.ndarray]) -> float:
    """Median candidate time / median baseline time, calls interleaved A B A B after warm-up (shared timer)."""
    from onnxshrink.validate.latency import interleave

    a, b = _session(baseline), _session(candidate)
    times_a, times_b = interleave(
        lambda: a.run(None, feed), lambda: b.run(None, feed), warmup=20, repeats=200, min_time_s=0.6, max_repeats=5000
    )
    return statistics.median(times_b) / statistics.median(times_a)


def accuracy(model: onnx.ModelProto, inputs: np.ndarray, labels: np.ndarray) -> float:
    sess = _session(model)
    name = sess.get_inputs()[0].name
    logits = sess.run(None, {name: inputs})[0]
    return float(np.mean(np.argmax(logits, axis=-1) == labels))


@contextlib.contextmanager
def _in_temp_folder():
    """Quantizers run in a temporary folder (onnxruntime's write files) with their log advice muted."""
    previous = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="bench-quant-") as folder:
        os.chdir(folder)
        logging.disable(logging.WARNING)
        try:
            yield Path(folder)
        finally:
            logging.disable(logging.NOTSET)
            os.chdir(previous)


# --- candidates -------------------------------------------------------------------------------------


def onnxshrink_candidate(options: dict[str, str]) -> Callable:
    from onnxshrink.plugin.method import PluginSpec
    from onnxshrink.plugin.registry import load_registry
    from onnxshrink.run.pipeline import prepare_steps, run_steps

    def make(model: onnx.ModelProto, feeds: list[dict[str, np.ndarray]], path: Path) -> onnx.ModelProto:
        out = onnx.ModelProto()
        out.CopyFrom(model)
        steps = prepare_steps([PluginSpec("int_quant", dict(options))], load_registry())
        [result] = run_steps(out, steps, seed=0, calibration=lambda: feeds, calibration_is_synthetic=False)
        make.last_stats = result.stats
        return out

    return make


class _Reader:
    def __init__(self, feeds):
        self.feeds = list(feeds)

    def get_next(self):
        return self.feeds.pop(0) if self.feeds else None


def ort_dynamic(model, feeds, path):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    onnx.save(model, path / "in.onnx")
    quantize_dynamic(str(path / "in.onnx"), str(path / "out.onnx"), weight_type=QuantType.QInt8)
    return onnx.load(path / "out.onnx")


def ort_static(model, feeds, path):
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quant_pre_process, quantize_static

    onnx.save(model, path / "in.onnx")
    quant_pre_process(str(path / "in.onnx"), str(path / "pre.onnx"), skip_symbolic_shape=True)
    quantize_static(
        str(path / "pre.onnx"),
        str(path / "out.onnx"),
        _Reader(feeds),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
    )
    return onnx.load(path / "out.onnx")


def ort_matmulnbits(model, feeds, path):
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    quantizer = MatMulNBitsQuantizer(
        onnx.ModelProto.FromString(model.SerializeToString()), bits=4, block_size=INT4_BLOCK, is_symmetric=True
    )
    quantizer.process()
    return quantizer.model.model


CANDIDATES: list[tuple[str, Callable]] = [
    ("onnxshrink int8 storage", onnxshrink_candidate({"mode": "storage"})),
    ("onnxshrink int8 weights", onnxshrink_candidate({"mode": "weights"})),
    ("onnxshrink int8 dynamic", onnxshrink_candidate({"mode": "dynamic"})),
    ("onnxshrink int8 static", onnxshrink_candidate({"mode": "static"})),
    ("onnxshrink int4 weights", onnxshrink_candidate({"mode": "weights", "bits": "4", "block_size": str(INT4_BLOCK)})),
    ("onnxshrink auto", onnxshrink_candidate({"mode": "auto"})),
    ("ORT quantize_dynamic", ort_dynamic),
    ("ORT quantize_static QDQ per-channel", ort_static),
    ("ORT MatMulNBits 4-bit", ort_matmulnbits),
]


# --- the run ----------------------------------------------------------------------------------------


def _batches(inputs: np.ndarray, name: str, size: int) -> list[dict[str, np.ndarray]]:
    return [{name: inputs[i : i + size]} for i in range(0, len(inputs), size)]


def bench_model(name: str) -> list[dict]:
    model = onnx.load(MODELS / f"{name}.onnx")
    evaluation = np.load(MODELS / f"{name}_eval.npz")
    calibration = np.load(MODELS / f"{name}_calib.npz")
    input_name = model.graph.input[0].name
    feeds = _batches(calibration["input"], input_name, CALIB_BATCH)
    latency_feeds = {n: {input_name: evaluation["input"][:n]} for n in LATENCY_BATCHES}
    base_acc = accuracy(model, evaluation["input"], evaluation["labels"])
    rows = [
        {
            "model": name,
            "method": "float32",
            "bytes": model.ByteSize(),
            "latency": {n: 1.0 for n in LATENCY_BATCHES},
            "accuracy": base_acc,
            "note": "",
        }
    ]
    for label, make in CANDIDATES:
        row = {"model": name, "method": label}
        try:
            with _in_temp_folder() as folder:
                candidate = make(model, [dict(f) for f in feeds], folder)
            stats = getattr(make, "last_stats", None)
            row.update(
                bytes=candidate.ByteSize(),
                latency={n: latency_ratio(model, candidate, feed) for n, feed in latency_feeds.items()},
                accuracy=accuracy(candidate, evaluation["input"], evaluation["labels"]),
                note=_note(stats),
            )
        except ImportError as exc:
            row.update(
                bytes=None, latency=None, accuracy=None, note=f"skipped: needs the {exc.name or 'missing'} package"
            )
        except Exception as exc:  # noqa: BLE001 - a quantizer that fails is a result, shown in the table
            row.update(
                bytes=None,
                latency=None,
                accuracy=None,
                note=f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:80]}",
            )
        rows.append(row)
    return rows


def _note(stats: dict | None) -> str:
    if not stats:
        return ""
    if stats.get("auto"):
        return f"chose {stats['auto']['winner']}"
    forms = stats.get("forms") or {}
    return ", ".join(f"{count} {form}" for form, count in forms.items())


def print_table(rows: list[dict]) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # pragma: no cover - rich is a dependency
        Console = None
    headers = [
        "model",
        "method",
        "size (bytes)",
        "size ratio",
        *(f"latency ratio, batch {n}" for n in LATENCY_BATCHES),
        "accuracy",
        "Δ accuracy (pts)",
        "note",
    ]
    base = {r["model"]: r for r in rows if r["method"] == "float32"}
    cells = []
    for r in rows:
        b = base[r["model"]]
        if r["bytes"] is None:
            cells.append([r["model"], r["method"], "-", "-", *("-" for _ in LATENCY_BATCHES), "-", "-", r["note"]])
            continue
        cells.append(
            [
                r["model"],
                r["method"],
                f"{r['bytes']:,}",
                f"{r['bytes'] / b['bytes']:.3f}",
                *(f"{r['latency'][n]:.2f}x" for n in LATENCY_BATCHES),
                f"{100 * r['accuracy']:.2f}%",
                f"{100 * (r['accuracy'] - b['accuracy']):+.2f}",
                r["note"],
            ]
        )
    if Console is None:
        print(" | ".join(headers))
        for c in cells:
            print(" | ".join(c))
        return
    table = Table(
        title=f"int_quant vs onnxruntime.quantization (onnxruntime {ort.__version__}, CPU EP, 1 thread; "
        "latency = candidate / float32 median, interleaved)"
    )
    for h in headers:
        table.add_column(h, justify="right" if h not in ("model", "method", "note") else "left")
    for c in cells:
        table.add_row(*c)
    Console(width=200).print(table)


def main(argv: list[str] | None = None) -> None:
    wanted = list(argv or [])
    names = sorted(p.stem for p in MODELS.glob("*.onnx") if (MODELS / f"{p.stem}_eval.npz").exists())
    names = [n for n in names if not wanted or n in wanted]
    if not names:
        print(f"no model with an _eval.npz in {MODELS}")
        return
    started = time.perf_counter()
    rows = []
    for name in names:
        rows.extend(bench_model(name))
    print_table(rows)
    print(f"({len(names)} models, {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main(sys.argv[1:])
