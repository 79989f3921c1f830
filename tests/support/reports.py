"""A report as the CLI writes it, for the gate and report tests."""

from __future__ import annotations


def sample_report() -> dict:
    """A report as the CLI writes it: cpu and cuda timed, tensorrt failed, labels given."""
    base_size = {"file_bytes": 1000, "params": 200, "nonzeros": 180, "compressed_bytes": 800}
    cand_size = {"file_bytes": 400, "params": 200, "nonzeros": 90, "compressed_bytes": 320}
    return {
        "schema": "onnxshrink.report/1",
        "tool": {"name": "onnxshrink", "version": "0.1.0"},
        "input": {"path": "models/cnn.onnx", "size": dict(base_size)},
        "output": {"path": "out/cnn.small.onnx", "size": dict(cand_size)},
        "steps": [
            {"plugin": "weight_prune", "options": {"sparsity": 0.5, "scope": "global"}, "seconds": 0.12, "stats": {}},
            {"plugin": "int_quant", "options": {"mode": "storage"}, "seconds": 0.3, "stats": {}},
        ],
        "validation": {
            "data": {"source": "models/cnn_eval.npz", "samples": 32, "feeds": 32, "synthetic": False, "warnings": []},
            "size": {
                "baseline": dict(base_size),
                "candidate": dict(cand_size),
                "size_ratio": 0.4,
                "params_ratio": 1.0,
                "nonzeros_ratio": 0.5,
                "compressed_ratio": 0.4,
            },
            "latency": {
                "cpu": {
                    "status": "ok",
                    "baseline": {"median_ms": 2.0, "p90_ms": 2.4, "min_ms": 1.9, "spread": 0.05, "runs": 20},
                    "candidate": {"median_ms": 1.5, "p90_ms": 1.8, "min_ms": 1.4, "spread": 0.05, "runs": 20},
                    "ratio": 0.75,
                    "warning": None,
                },
                "cuda": {
                    "status": "ok",
                    "baseline": {"median_ms": 0.5, "p90_ms": 0.6, "min_ms": 0.45, "spread": 0.3, "runs": 20},
                    "candidate": {"median_ms": 0.6, "p90_ms": 0.7, "min_ms": 0.55, "spread": 0.3, "runs": 20},
                    "ratio": 1.2,
                    "warning": "spread 30% is wide; the ratio is noisy",
                },
                "tensorrt": {"status": "failed", "error": "TensorRT could not build the engine"},
            },
            "fidelity": {
                "outputs": {
                    "logits": {"cosine": 0.9995, "max_abs_error": 0.02, "rel_error": 0.01, "top1_agreement": 0.98}
                },
                "cosine": 0.9995,
                "cosine_mean": 0.9998,
                "max_abs_error": 0.02,
                "rel_error": 0.01,
                "snr_db": 40.0,
                "top1_agreement": 0.98,
                "accuracy": {"baseline": 0.9, "candidate": 0.88, "drop": 0.02},
            },
        },
    }
