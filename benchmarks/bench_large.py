"""Large models: wall time and peak memory of onnxshrink against the I/O floor and onnxruntime's quantizers.

Generates transformer-like MatMul stacks with external data (1 GB and 3 GB by default; set
ONNXSHRINK_BENCH_LARGE_GB="0.5,1" to change; gptq runs on the sizes in ONNXSHRINK_BENCH_LARGE_GPTQ_GB,
default "1", "" for none), then runs every job in its own process so its peak
resident memory (ru_maxrss from wait4) is its own. All jobs run in the same invocation, side by side.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

from onnxshrink.testing.large_models import make_mlp_stack

IO_FLOOR = """
import onnx, sys
m = onnx.load(sys.argv[1])
onnx.save_model(m, sys.argv[2], save_as_external_data=True, location="out.onnx.data")
"""
ORT_DYNAMIC = """
import sys
from onnxruntime.quantization import QuantType, quantize_dynamic
quantize_dynamic(sys.argv[1], sys.argv[2], weight_type=QuantType.QInt8, use_external_data_format=True)
"""
ORT_NBITS = """
import onnx, sys
from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
q = MatMulNBitsQuantizer(onnx.load(sys.argv[1]), bits=4, block_size=32)
q.process()
onnx.save_model(q.model.model, sys.argv[2], save_as_external_data=True, location="out.onnx.data")
"""


def jobs(model: Path, out: Path, calibration: Path | None = None) -> list[tuple[str, list[str]]]:
    py = sys.executable
    shrink = [py, "-m", "onnxshrink", str(model), "--no-validate", "-q", "-o", str(out)]
    gptq = (
        [("onnxshrink gptq 4-bit, 32 rows", [*shrink, "--plugin", "gptq", "--data", str(calibration)])]
        if calibration
        else []
    )
    return [
        ("onnx load + save (I/O floor)", [py, "-c", textwrap.dedent(IO_FLOOR), str(model), str(out)]),
        ("onnxshrink weight_prune 50%", [*shrink, "--plugin", "weight_prune:sparsity=0.5"]),
        ("onnxshrink int_quant storage int8", [*shrink, "--plugin", "int_quant:mode=storage"]),
        ("onnxshrink int_quant weights int4", [*shrink, "--plugin", "int_quant:mode=weights,bits=4"]),
        ("ORT quantize_dynamic int8", [py, "-c", textwrap.dedent(ORT_DYNAMIC), str(model), str(out)]),
        ("ORT MatMulNBits 4-bit", [py, "-c", textwrap.dedent(ORT_NBITS), str(model), str(out)]),
        *gptq,
    ]


def run(cmd: list[str]) -> tuple[float, float, int, str]:
    """(seconds, peak RSS in bytes, exit code, last stderr line) of one child process."""
    with tempfile.TemporaryFile(mode="w+") as log:  # a file, not a pipe: a chatty child cannot block on it
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - started
        log.seek(0)
        err = log.read().strip().splitlines()
    return seconds, usage.ru_maxrss * 1024, os.waitstatus_to_exitcode(status), (err[-1] if err else "")


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


def main() -> None:
    sizes = [float(s) for s in os.environ.get("ONNXSHRINK_BENCH_LARGE_GB", "1,3").split(",") if s.strip()]
    gptq_sizes = {float(s) for s in os.environ.get("ONNXSHRINK_BENCH_LARGE_GPTQ_GB", "1").split(",") if s.strip()}
    root = Path(tempfile.mkdtemp(prefix="onnxshrink-bench-large-"))
    try:
        header = (
            f"{'model':>8} | {'job':<36} | {'time s':>7} | {'x floor':>7} | {'peak RSS GB':>11} | "
            f"{'x model':>7} | {'output GB':>9} | note"
        )
        print(header)
        print("-" * len(header))
        for gb in sizes:
            src = root / f"in{gb:g}"
            src.mkdir()
            model = make_mlp_stack(src / "model.onnx", int(gb * 2**30))
            os.sync()  # the generator's data written out now, not during the first timed job (the floor)
            calibration = None
            if gb in gptq_sizes:  # GPTQ inverts a 4096x4096 Hessian per down-projection: minutes per GB
                calibration = root / f"calib{gb:g}.npz"
                np.savez(calibration, input=np.random.default_rng(0).standard_normal((32, 1024)).astype(np.float32))
            model_bytes = folder_bytes(src)
            floor = None
            for name, cmd in jobs(model, root / "out" / "out.onnx", calibration):
                (root / "out").mkdir(exist_ok=True)
                seconds, rss, code, last = run(cmd)
                floor = floor or seconds
                out_bytes = folder_bytes(root / "out") if code == 0 else 0
                note = "ok" if code == 0 else f"exit {code}: {last[:60]}"
                print(
                    f"{model_bytes / 2**30:>6.2f}GB | {name:<36} | {seconds:>7.1f} | {seconds / floor:>7.2f} | "
                    f"{rss / 2**30:>11.2f} | {rss / model_bytes:>7.2f} | {out_bytes / 2**30:>9.2f} | {note}",
                    flush=True,
                )
                shutil.rmtree(root / "out")
            shutil.rmtree(src)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
