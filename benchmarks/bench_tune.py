"""tune on the zoo: per model, the tuned size at the gate beside int_quant's default and the best
single-method default, trials and wall time.

The gate is ``cosine>=0.99, latency_ratio[cpu]<=1.0`` (``ONNXSHRINK_BENCH_TUNE_GATES`` to change it,
comma-separated). Each installed method's default is measured exactly as a tune trial is (a child
process, calibration on the first half of the feeds, the worst cosine on the second half; at most
``ONNXSHRINK_BENCH_TUNE_DEFAULT_LIMIT`` seconds, 300 by default, for each but int_quant's) and then
timed the same way (interleaved against the baseline, alone on the machine): int_quant's always, the
others smallest first until one passes every gate.

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
# each other method's default runs with this limit (binarize's can take long on a large model)
DEFAULT_LIMIT_S = float(os.environ.get("ONNXSHRINK_BENCH_TUNE_DEFAULT_LIMIT", "300"))


def method_default(method: str, model: Path, data: Path, workdir: Path, limit_s: float = 1800) -> dict:
    """One method with no options, measured like a trial (a child process, calibration on the first
    half of the feeds, the worst cosine on the second half); not timed yet (see ``timed``)."""
    from onnxshrink.tune.trial import run_isolated

    spec = {
        "number": 0,
        "chain": [{"plugin": method, "options": {}}],
        "model": str(model),
        "data": str(data),
        "input_shapes": {},
        "seed": 0,
        "gates": GATES,
        "workdir": str(workdir / method),
        "keep": True,
    }
    started = time.perf_counter()
    result = run_isolated(spec, limit_s, None)
    out = {
        "method": method,
        "status": result["status"],
        "error": result.get("error"),
        "seconds": time.perf_counter() - started,
        "gates_passed": result.get("gates_passed", False),
        "files": result.get("files", []),
    }
    out.update(result.get("metrics") or {})
    return out


def timed(out: dict, model: Path, data: Path) -> dict:
    """``out`` timed alone against the baseline (interleaved), with its verdict on every gate."""
    from onnxshrink.tune.timing import evaluation_feeds, latency_ratios, time_candidates
    from onnxshrink.validate.gate import evaluate_gates, parse_gate

    if out["status"] != "ok":
        return out
    latency = time_candidates(
        model, [(0, Path(out["files"][0]))], evaluation_feeds(model, data, {}, 0), ["cpu"], seconds=60
    )[0]
    out["latency_ratio"] = latency_ratios(latency)["cpu"]
    latency_checks = [c for c in map(parse_gate, GATES) if c.metric.startswith("latency")]
    out["passed"] = bool(
        out["gates_passed"] and evaluate_gates(latency_checks, {"validation": {"latency": latency}})["passed"]
    )
    return out


def best_single_default(model: Path, data: Path, workdir: Path, known: dict[str, dict]) -> dict | None:
    """The smallest model any one installed method gives at its defaults that passes every gate.

    ``known``: methods already measured (and timed). The others run with ``DEFAULT_LIMIT_S`` each;
    those that pass the gates a trial judges are timed smallest first, until one passes the latency gate.
    """
    from onnxshrink.plugin.registry import default_registry

    results = dict(known)
    for method in sorted(default_registry().methods):
        if method not in results:
            results[method] = method_default(method, model, data, workdir, DEFAULT_LIMIT_S)
    candidates = sorted(
        (r for r in results.values() if r["status"] == "ok" and r["gates_passed"]),
        key=lambda r: (r["size_ratio"], r["method"]),
    )
    for result in candidates:
        if "passed" not in result:
            timed(result, model, data)
        if result["passed"]:
            return result
    return None


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
        "| model | file | int_quant default: size, cosine, latency, passed | best single-method default: method, "
        "size | tuned: size, cosine, latency | trials (ok/failed/timeout/invalid; repeats reused) | wall "
        "| chosen chain |"
    )
    print("|---|---:|---|---|---|---|---:|---|")
    for name in names:
        model, data = ZOO / "models" / f"{name}.onnx", ZOO / "data" / f"{name}.npz"
        with tempfile.TemporaryDirectory(prefix=f"bench_tune_{name}_") as tmp:
            base = timed(method_default("int_quant", model, data, Path(tmp) / "default"), model, data)
            best = best_single_default(model, data, Path(tmp) / "default", {"int_quant": base})
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
        single = f"{best['method']}, {_fmt(best['size_ratio'])}x" if best else "none passed"
        result = (
            f"{_fmt(tune_out.get('size_ratio'))}x, {_fmt(tune_out.get('cosine'), '.4f')}, "
            f"{_fmt(tune_out.get('latency_ratio'))}x"
            if tune_out["code"] == 0
            else "none passed"
        )
        s = tune_out["statuses"]
        print(
            f"| {name} | {model.stat().st_size / 2**20:.1f} MiB | {default} | {single} | {result} | "
            f"{tune_out['trials']} ({s['ok']}/{s['failed']}/{s['timeout']}/{s['invalid']}; "
            f"{tune_out['repeats']} repeats) | {tune_out['seconds']:.0f} s | {tune_out.get('chain', '-')} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
