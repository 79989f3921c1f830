"""gptq and binarize against round-to-nearest and onnxruntime's MatMulNBits quantizers, on every model in models/.

For each model, in one run: the float model; onnxshrink gptq with ``algorithm=rtn`` (round to nearest
on the same grid) and ``algorithm=gptq``, each without and with bias correction, at 4 bits and at
2 bits, groups of 32, asymmetric, packed storage; onnxruntime's own 4-bit quantizers
(``MatMulNBitsQuantizer`` with its default, RTN and GPTQ configurations, groups of 32, asymmetric),
which quantize MatMul weights only, next to onnxshrink restricted to MatMul for an equal footing;
then binarize and ternary with the default budget and with every candidate layer.

Columns: tensors quantized, stored bits per quantized weight, file bytes, output error (relative L2
distance of the logits to the float model's on models/<name>_eval.npz), accuracy on its labels and
the change against float, and the CPU latency ratio against float (batch 1, one thread, calls
interleaved A B A B after warm-up). Calibration: the 128 samples of models/<name>_calib.npz in feeds of 32.

    python benchmarks/bench_gptq.py            # every model
    python benchmarks/bench_gptq.py cnn        # some of them
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
GROUP = 32


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def latency_ratio(baseline: onnx.ModelProto, candidate: onnx.ModelProto, feed: dict) -> float:
    from onnxshrink.validate.latency import interleave

    a, b = _session(baseline), _session(candidate)
    times_a, times_b = interleave(
        lambda: a.run(None, feed), lambda: b.run(None, feed), warmup=20, repeats=100, min_time_s=0.25, max_repeats=2000
    )
    return statistics.median(times_b) / statistics.median(times_a)


def onnxshrink_step(
    model: onnx.ModelProto, feeds: list[dict], plugin: str, options: dict
) -> tuple[onnx.ModelProto, dict]:
    from onnxshrink.plugin.method import PluginSpec
    from onnxshrink.plugin.registry import load_registry
    from onnxshrink.run.pipeline import prepare_steps, run_steps

    out = onnx.ModelProto()
    out.CopyFrom(model)
    steps = prepare_steps([PluginSpec(plugin, {k: str(v) for k, v in options.items()})], load_registry())
    [result] = run_steps(out, steps, seed=0, calibration=lambda: feeds, calibration_is_synthetic=False)
    return out, result.stats


@contextlib.contextmanager
def _quiet_temp_folder():
    """onnxruntime's quantizers log a line per node and may write files: mute them, work in a temp folder."""
    previous = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="bench-gptq-") as folder:
        os.chdir(folder)
        logging.disable(logging.WARNING)
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # its progress bars
                yield
        finally:
            logging.disable(logging.NOTSET)
            os.chdir(previous)


def ort_matmulnbits(model: onnx.ModelProto, feeds: list[dict], algorithm: str) -> tuple[onnx.ModelProto | None, str]:
    """onnxruntime's 4-bit MatMulNBits quantizer (MatMul weights only); (None, reason) when it cannot run."""
    from onnxruntime.quantization import CalibrationDataReader
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        GPTQWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
        RTNWeightOnlyQuantConfig,
    )

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter(feeds)

        def get_next(self):
            return next(self.items, None)

    weights = {t.name: tuple(t.dims) for t in model.graph.initializer}
    matmuls = [n for n in model.graph.node if n.op_type == "MatMul" and len(weights.get(n.input[1], ())) == 2]
    if not matmuls:
        return None, "no MatMul weight (it quantizes MatMul only)"
    small = [n.name for n in matmuls if weights[n.input[1]][0] < GROUP]  # its RTN crashes on K < block size
    configs = {
        "default": lambda: DefaultWeightOnlyQuantConfig(block_size=GROUP, is_symmetric=False, bits=4),
        "rtn": lambda: RTNWeightOnlyQuantConfig(),
        "gptq": lambda: GPTQWeightOnlyQuantConfig(calibration_data_reader=Reader(), block_size=128),
    }
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    with _quiet_temp_folder():
        try:
            quantizer = MatMulNBitsQuantizer(
                copy,
                bits=4,
                block_size=GROUP,
                is_symmetric=False,
                nodes_to_exclude=small,
                algo_config=configs[algorithm](),
            )
            quantizer.process()
        except ModuleNotFoundError as exc:
            return None, f"unavailable: it imports {exc.name}, which is not installed"
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - report why, never fake a number
            return None, f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:60]}"
    note = f"{len(small)} MatMul with K < {GROUP} left float" if small else ""
    return quantizer.model.model, note


def evaluate(baseline, candidate, evaluation, reference_logits, float_accuracy, feed_one) -> dict:
    logits = _session(candidate).run(None, {"input": evaluation["input"]})[0]
    accuracy = float(np.mean(np.argmax(logits, -1) == evaluation["labels"]))
    return {
        "bytes": candidate.ByteSize(),
        "error": float(np.linalg.norm(logits - reference_logits) / np.linalg.norm(reference_logits)),
        "accuracy": accuracy,
        "delta": accuracy - float_accuracy,
        "latency": latency_ratio(baseline, candidate, feed_one),
    }


def rows_for(name: str) -> list[list[str]]:
    model = onnx.load(MODELS / f"{name}.onnx")
    calib = np.load(MODELS / f"{name}_calib.npz")["input"]
    evaluation = dict(np.load(MODELS / f"{name}_eval.npz"))
    feeds = [{"input": calib[i : i + 32]} for i in range(0, len(calib), 32)]
    feed_one = {"input": evaluation["input"][:1]}
    reference = _session(model).run(None, {"input": evaluation["input"]})[0]
    float_accuracy = float(np.mean(np.argmax(reference, -1) == evaluation["labels"]))
    rows = [
        [name, "float32", "-", "-", "32", f"{model.ByteSize():,}", "1.0x", "0", f"{float_accuracy:.4f}", "", "1.00", ""]
    ]

    def add(label, bits, candidate, stats_tensors, bits_per_weight, note=""):
        m = evaluate(model, candidate, evaluation, reference, float_accuracy, feed_one)
        rows.append(
            [
                name,
                label,
                str(bits),
                str(stats_tensors),
                f"{bits_per_weight:.2f}",
                f"{m['bytes']:,}",
                f"{model.ByteSize() / m['bytes']:.1f}x",
                f"{m['error']:.4f}",
                f"{m['accuracy']:.4f}",
                f"{100 * m['delta']:+.1f}",
                f"{m['latency']:.2f}",
                note,
            ]
        )

    for bits in (4, 2):
        for algorithm in ("rtn", "gptq"):
            for correct in (False, True):
                started = time.perf_counter()
                out, stats = onnxshrink_step(
                    model,
                    feeds,
                    "gptq",
                    {
                        "bits": bits,
                        "group_size": GROUP,
                        "algorithm": algorithm,
                        "bias_correction": str(correct).lower(),
                    },
                )
                label = f"onnxshrink {algorithm}{' + bias corr.' if correct else ''}"
                add(
                    label,
                    bits,
                    out,
                    stats["quantized_tensors"],
                    stats["bits_per_weight"],
                    f"{time.perf_counter() - started:.1f} s",
                )
    weights = {t.name: len(t.dims) for t in model.graph.initializer}
    if any(n.op_type == "MatMul" and weights.get(n.input[1]) == 2 for n in model.graph.node):
        for algorithm in ("rtn", "gptq"):
            out, stats = onnxshrink_step(
                model,
                feeds,
                "gptq",
                {
                    "bits": 4,
                    "group_size": GROUP,
                    "algorithm": algorithm,
                    "bias_correction": "false",
                    "op_types": "[MatMul]",
                },
            )
            add(
                f"onnxshrink {algorithm}, MatMul only",
                4,
                out,
                stats["quantized_tensors"],
                stats["bits_per_weight"],
                "the layers onnxruntime quantizes",
            )
    for algorithm in ("default", "rtn", "gptq"):
        out, note = ort_matmulnbits(model, feeds, algorithm)
        if out is None:
            rows.append(
                [name, f"onnxruntime MatMulNBits {algorithm}", "4", "-", "-", "-", "-", "-", "-", "-", "-", note]
            )
        else:
            add(
                f"onnxruntime MatMulNBits {algorithm}",
                4,
                out,
                sum(n.op_type == "MatMulNBits" for n in out.graph.node),
                float("nan"),
                note,
            )
    for variant in ("binary", "ternary"):
        for budget in (0.02, 1.0):
            out, stats = onnxshrink_step(model, feeds, "binarize", {"variant": variant, "budget": budget})
            note = (
                f"budget {budget:g}: {stats['binarized_tensors']}/{stats['candidate_tensors']} layers, "
                f"calib loss {stats['fidelity_loss']:.3f}"
            )
            add(
                f"binarize {variant}",
                1 if variant == "binary" else 2,
                out,
                stats["binarized_tensors"],
                stats["bits_per_weight"],
                note,
            )
    return rows


def _fix_nan(rows: list[list[str]]) -> None:
    for row in rows:
        if row[4] == "nan":
            row[4] = "-"


def main(names: list[str] | None = None) -> None:
    names = names or ["cnn", "mlp", "transformer"]
    header = [
        "model",
        "method",
        "bits",
        "tensors",
        "bits/w",
        "file bytes",
        "smaller",
        "out err",
        "accuracy",
        "Δacc pt",
        "latency",
        "note",
    ]
    rows: list[list[str]] = []
    for name in names:
        if not (MODELS / f"{name}.onnx").exists():
            print(f"models/{name}.onnx not found; skipped")
            continue
        rows.extend(rows_for(name))
    _fix_nan(rows)
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    print(
        f"gptq / binarize, groups of {GROUP}, asymmetric, packed storage (onnxshrink); onnxruntime {ort.__version__}; "
        "out err = ||logits - float|| / ||float|| on the eval set; latency = candidate / float, batch 1, 1 thread"
    )
    print(" | ".join(h.ljust(w) for h, w in zip(header, widths)))
    print("-|-".join("-" * w for w in widths))
    for row in rows:
        print(" | ".join(str(c).ljust(w) for c, w in zip(row, widths)))


if __name__ == "__main__":
    main(sys.argv[1:])
