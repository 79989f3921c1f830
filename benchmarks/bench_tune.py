"""tune on the zoo: per model, the tuned size at the gate beside int_quant's default, trials and wall time.

The gate is ``cosine>=0.99, latency_ratio[cpu]<=1.0`` (``ONNXSHRINK_BENCH_TUNE_GATES`` to change it,
comma-separated). int_quant's default is measured exactly as a tune trial is (a child process,
calibration on the first half of the feeds, the worst cosine on the second half) and then timed the
same way (interleaved against the baseline, alone on the machine).

    python benchmarks/bench_tune.py                       # every zoo model, 10 minutes each
    python benchmarks/bench_tune.py centerface mrz_unet   # some of them
    ONNXSHRINK_BENCH_TUNE_TIME=3m ONNXSHRINK_BENCH_TUNE_JOBS=1 python benchmarks/bench_tune.py
    ONNXSHRINK_BENCH_TUNE_REPORTS=out/tune python benchmarks/bench_tune.py   # keep each tune report

The zoo is found through ``ONNXSHRINK_ZOO`` (default ``<repo>/.zoo``); see the zoo's README.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ZOO = Path(os.environ.get("ONNXSHRINK_ZOO", ROOT / ".zoo"))
GATES = [
    g.strip() for g in os.environ.get("ONNXSHRINK_BENCH_TUNE_GATES", "cosine>=0.99,latency_ratio[cpu]<=1.0").split(",")
]
BUDGET = os.environ.get("ONNXSHRINK_BENCH_TUNE_TIME", "10m")
JOBS = int(os.environ.get("ONNXSHRINK_BENCH_TUNE_JOBS", "1"))
REPORTS = os.environ.get("ONNXSHRINK_BENCH_TUNE_REPORTS")  # a folder to keep each model's tune report in


def int_quant_default(model: Path, data: Path, workdir: Path) -> dict:
    """int_quant with no options, measured like a trial, then timed alone against the baseline."""
    from onnxshrink.tune.timing import evaluation_feeds, latency_ratios, time_candidates
    from onnxshrink.tune.trial import run_isolated
    from onnxshrink.validate.gate import evaluate_gates, parse_gate

    spec = {
        "number": 0,
        "chain": [{"plugin": "int_quant", "options": {}}],
        "model": str(model),
        "data": str(data),
        "input_shapes": {},
        "seed": 0,
        "gates": GATES,
        "workdir": str(workdir),
        "keep": True,
    }
    started = time.perf_counter()
    result = run_isolated(spec, 1800, None)
    out = {"status": result["status"], "error": result.get("error"), "seconds": time.perf_counter() - started}
    if result["status"] != "ok":
        return out
    out.update(result["metrics"])
    latency = time_candidates(
        model, [(0, Path(result["files"][0]))], evaluation_feeds(model, data, {}, 0), ["cpu"], seconds=60
    )[0]
    out["latency_ratio"] = latency_ratios(latency)["cpu"]
    latency_checks = [c for c in map(parse_gate, GATES) if c.metric.startswith("latency")]
    out["passed"] = bool(
        result["gates_passed"] and evaluate_gates(latency_checks, {"validation": {"latency": latency}})["passed"]
    )
    return out


def tuned(model: Path, data: Path, workdir: Path) -> dict:
    from onnxshrink.tune import TuneJob, parse_duration, tune
    from onnxshrink.tune.summary import chain_text

    started = time.perf_counter()
    report, code = tune(
        TuneJob(
            model=model,
            data=data,
            gates=GATES,
            time_s=parse_duration(BUDGET),
            jobs=JOBS,
            output=workdir / "best.onnx",
            report=workdir / "tune.json",
        )
    )
    if REPORTS:
        Path(REPORTS).mkdir(parents=True, exist_ok=True)
        (Path(REPORTS) / f"{model.stem}.tune.json").write_bytes((workdir / "tune.json").read_bytes())
    out = {
        "code": code,
        "trials": len(report["trials"]),
        "seconds": time.perf_counter() - started,
        "statuses": {
            s: sum(t["status"] == s for t in report["trials"]) for s in ("ok", "failed", "timeout", "invalid")
        },
        "repeats": sum(t.get("same_as") is not None for t in report["trials"]),
    }
    if report["chosen"] is not None:
        chosen = next(t for t in report["trials"] if t["number"] == report["chosen"])
        out.update(
            chosen["metrics"],
            chain=chain_text(chosen["chain"], ".3g"),
        )
        out["latency_ratio"] = chosen["metrics"]["latency_ratio"]["cpu"]
    return out


def _fmt(value, spec=".3f") -> str:
    return "-" if value is None else format(value, spec)


def main(argv: list[str] | None = None) -> int:
    if not (ZOO / "models").is_dir():
        print(f"no zoo at {ZOO} (set ONNXSHRINK_ZOO); skipping")
        return 0
    names = list(argv or []) or sorted(p.stem for p in (ZOO / "models").glob("*.onnx"))
    print(f"gate {', '.join(GATES)}; tune budget {BUDGET} per model, --jobs {JOBS}; {os.cpu_count()} CPUs")
    print(
        "| model | file | int_quant default: size, cosine, latency, passed | tuned: size, cosine, latency | trials "
        "(ok/failed/timeout/invalid; repeats reused) | wall | chosen chain |"
    )
    print("|---|---:|---|---|---|---:|---|")
    for name in names:
        model, data = ZOO / "models" / f"{name}.onnx", ZOO / "data" / f"{name}.npz"
        with tempfile.TemporaryDirectory(prefix=f"bench_tune_{name}_") as tmp:
            base = int_quant_default(model, data, Path(tmp) / "default")
            tune_out = tuned(model, data, Path(tmp))
        default = (
            (
                f"{_fmt(base.get('size_ratio'))}x, {_fmt(base.get('cosine'), '.4f')}, "
                f"{_fmt(base.get('latency_ratio'))}x, "
                f"{'yes' if base.get('passed') else 'no'}"
            )
            if base["status"] == "ok"
            else f"{base['status']}: {base['error'][:60]}"
        )
        result = (
            f"{_fmt(tune_out.get('size_ratio'))}x, {_fmt(tune_out.get('cosine'), '.4f')}, "
            f"{_fmt(tune_out.get('latency_ratio'))}x"
            if tune_out["code"] == 0
            else "none passed"
        )
        s = tune_out["statuses"]
        print(
            f"| {name} | {model.stat().st_size / 2**20:.1f} MiB | {default} | {result} | {tune_out['trials']} "
            f"({s['ok']}/{s['failed']}/{s['timeout']}/{s['invalid']}; {tune_out['repeats']} repeats) | "
            f"{tune_out['seconds']:.0f} s | {tune_out.get('chain', '-')} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
