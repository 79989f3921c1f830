"""One table: every model in models/ with the main built-in methods, through the real shrink pipeline.

Size ratio, CPU latency ratio (baseline and candidate timed interleaved in the same run, 1 thread),
cosine similarity of the logits and accuracy on the labels, all from onnxshrink's own validation.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from onnxshrink.plugin.method import PluginSpec
from onnxshrink.run.recipe import Recipe
from onnxshrink.run.shrink import shrink

MODELS = Path(__file__).resolve().parent.parent / "models"
CHAINS = {
    "weight_prune 50% global": [("weight_prune", {"sparsity": 0.5, "scope": "global"})],
    "weight_prune 80% + sparse_store": [("weight_prune", {"sparsity": 0.8, "scope": "global"}), ("sparse_store", {})],
    "channels 50% + reconstruct": [("weight_prune", {"structured": "channel", "sparsity": 0.5, "reconstruct": True})],
    "int_quant storage int8": [("int_quant", {"mode": "storage"})],
    "int_quant static int8": [("int_quant", {"mode": "static"})],
    "gptq 4-bit": [("gptq", {"bits": 4})],
}


def main() -> None:
    header = (
        f"{'model':<12} | {'chain':<32} | {'size':>6} | {'cpu latency':>11} | {'cosine':>8} | {'accuracy':>17} | note"
    )
    print(header)
    print("-" * len(header))
    with tempfile.TemporaryDirectory() as tmp:
        for model in ("cnn", "mlp", "transformer"):
            for label, chain in CHAINS.items():
                job = Recipe(
                    model=MODELS / f"{model}.onnx",
                    steps=[PluginSpec(name, options) for name, options in chain],
                    output=Path(tmp) / f"{model}.onnx",
                    data_path=MODELS / f"{model}_eval.npz",
                    repeats=30,
                )
                try:
                    report = shrink(job)
                except Exception as exc:  # noqa: BLE001 - a row that failed is shown, not hidden
                    print(f"{model:<12} | {label:<32} | failed: {exc}")
                    continue
                v = report["validation"]
                cpu, acc = v["latency"]["cpu"], v["fidelity"].get("accuracy") or {}
                note = cpu.get("warning") or ""
                print(
                    f"{model:<12} | {label:<32} | {v['size']['size_ratio']:>5.3f}x | "
                    f"{cpu.get('ratio', float('nan')):>10.3f}x | {v['fidelity']['cosine']:>8.5f} | "
                    f"{acc.get('baseline', 0):.4f} -> {acc.get('candidate', 0):.4f} | {note[:40]}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
