"""Can a latency gate be trusted? The gate `latency_ratio[cpu]<=1.0` run RUNS times on each zoo model
against itself (must pass every time) and against a copy doing ~1.3x the work (must fail every time).

The heavier copy duplicates a prefix of the graph (the first nodes in topological order, grown until
the copy is ~1.3x slower), fed through an identity Max(x, lowest) so that onnxruntime's common
subexpression elimination cannot merge it with the original, and ties every loose end of the copy
into one output as `output + 0 * mean(...)`: the outputs stay bit-identical (checked), the work
grows. Each gate run is the real `onnxshrink gate BASELINE CANDIDATE --data ZOO.npz --gate
'latency_ratio[cpu]<=1.0'` code path (measure.gate_models, in-process to spare the start-up time).

    python benchmarks/bench_gate_latency.py  # g2p_id_bert, vfl_dvector_int8, arabic_romanizer_encoder
    python benchmarks/bench_gate_latency.py open_nsfw --runs 5  # other zoo models, fewer runs
    ONNXSHRINK_ZOO=/path/to/.zoo python benchmarks/bench_gate_latency.py
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODELS = ("g2p_id_bert", "vfl_dvector_int8", "arabic_romanizer_encoder")
TARGET_WORK = 1.3
GATE = "latency_ratio[cpu]<=1.0"


def zoo_dir() -> Path:
    return Path(os.environ.get("ONNXSHRINK_ZOO", ROOT / ".zoo"))


# ------------------------------------------------------------------------------------ heavier copy


def _lowest(elem_type: int) -> np.ndarray | None:
    dtype = helper.tensor_dtype_to_np_dtype(elem_type)
    if np.issubdtype(dtype, np.floating):
        return np.array(np.finfo(dtype).min, dtype)
    if np.issubdtype(dtype, np.integer):
        return np.array(np.iinfo(dtype).min, dtype)
    return None


def heavier_copy(model: onnx.ModelProto, prefix: int) -> onnx.ModelProto:
    """A copy of ``model`` that also computes a duplicate of its first ``prefix`` nodes; same outputs."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {
        v.name: v.type.tensor_type.elem_type
        for v in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
    }
    stored = {t.name for t in g.initializer}
    nodes = list(g.node)[:prefix]
    rename: dict[str, str] = {}
    extra: list[onnx.NodeProto] = []
    for value in g.input:
        if value.name in stored:
            continue
        low = _lowest(value.type.tensor_type.elem_type)
        if low is None:
            continue
        const = f"{value.name}__lowest"
        g.initializer.append(numpy_helper.from_array(low, const))
        rename[value.name] = f"{value.name}__dup"
        extra.append(
            helper.make_node("Max", [value.name, const], [rename[value.name]], name=f"{value.name}__dup_identity")
        )
    dup_outputs: list[str] = []
    consumed: set[str] = set()
    for node in nodes:
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.name = f"{node.name or node.op_type}__dup"
        for i, name in enumerate(copy.input):
            if name in rename:
                consumed.add(rename[name])
                copy.input[i] = rename[name]
        for i, name in enumerate(copy.output):
            if name:
                rename[name] = f"{name}__dup"
                copy.output[i] = rename[name]
                dup_outputs.append(rename[name])
        extra.append(copy)
    loose = [t for t in dup_outputs if t not in consumed and types.get(t[: -len("__dup")], 0) in (1, 10, 11, 6, 7)]
    if not loose:
        raise ValueError("the duplicated prefix has no numeric loose end to keep alive")
    means = []
    for t in loose:
        f = f"{t}__f32"
        extra.append(helper.make_node("Cast", [t], [f], to=onnx.TensorProto.FLOAT))
        extra.append(helper.make_node("ReduceMean", [f], [f"{t}__mean"], keepdims=0))
        means.append(f"{t}__mean")
    target = next((o for o in g.output if o.type.tensor_type.elem_type == onnx.TensorProto.FLOAT), None)
    if target is None:
        raise ValueError("no float32 output to attach the duplicate to")
    g.initializer.append(numpy_helper.from_array(np.array(0.0, np.float32), "__dup_zero"))
    extra += [
        helper.make_node("Sum", means, ["__dup_total"]),
        helper.make_node("Mul", ["__dup_total", "__dup_zero"], ["__dup_nothing"]),
    ]
    for node in g.node:  # the original producer now writes to a private name; Add(.., 0 * total) restores it
        for i, name in enumerate(node.output):
            if name == target.name:
                node.output[i] = f"{target.name}__before_dup"
        for i, name in enumerate(node.input):  # nodes that also read the output read the value before the tie
            if name == target.name:
                node.input[i] = f"{target.name}__before_dup"
    extra.append(
        helper.make_node("Add", [f"{target.name}__before_dup", "__dup_nothing"], [target.name], name="__dup_tie")
    )
    g.node.extend(extra)
    return out


# ------------------------------------------------------------------------------------ measuring


def _feeds(name: str) -> list[dict[str, np.ndarray]]:
    with np.load(zoo_dir() / "data" / f"{name}.npz") as z:
        n = len(z[z.files[0]])
        return [{k: np.asarray(z[k][i]) for k in z.files} for i in range(n // 2, n)]


def _session(path: Path):  # for the output check
    from onnxshrink.validate.providers import make_session

    return make_session(path, "cpu", threads=1).session


def _work_ratio(base: Path, cand: Path, feed: dict, *, budget_s: float = 4.0) -> tuple[float, float, float]:
    from onnxshrink.validate.latency import measure_latency

    r = measure_latency(base, cand, [feed], "cpu", time_budget_s=budget_s)["cpu"]
    return r["ratio"], *r["ratio_ci"]


def build_heavier(name: str, folder: Path) -> tuple[Path, Path, tuple[float, float, float], int, int]:
    """The original's path, a ~1.3x copy's path, its measured work ratio, the prefix length and node count."""
    base = zoo_dir() / "models" / f"{name}.onnx"
    model = onnx.load(base)
    feed = _feeds(name)[0]
    limit = next(
        (i for i, n in enumerate(model.graph.node) if any(a.type in (5, 10) for a in n.attribute)),
        len(model.graph.node),
    )
    lo, hi = 1, limit
    best: tuple[Path, tuple[float, float, float], int] | None = None
    for step in range(6):  # bisection on the prefix length
        k = (lo + hi) // 2
        path = folder / f"{name}.x{step}.onnx"
        onnx.save(heavier_copy(model, k), path)
        ratio = _work_ratio(base, path, feed)
        if best is None or abs(ratio[0] - TARGET_WORK) < abs(best[1][0] - TARGET_WORK):
            best = (path, ratio, k)
        if abs(ratio[0] - TARGET_WORK) < 0.03 or hi - lo <= 1:
            break
        lo, hi = (k, hi) if ratio[0] < TARGET_WORK else (lo, k)
    assert best is not None
    path, ratio, k = best
    a, b = _session(base), _session(path)
    for f in _feeds(name)[:4]:
        for x, y in zip(a.run(None, f), b.run(None, f)):
            if not np.array_equal(x, y, equal_nan=True):
                raise AssertionError(f"{name}: the heavier copy changed an output")
    return base, path, ratio, k, len(model.graph.node)


def gate_runs(
    base: Path, cand: Path, data: Path, runs: int
) -> tuple[int, int, int, list[tuple[float, float, float]], float]:
    """(passed, failed, inconclusive, [(ratio, lo, hi)], seconds per run) over ``runs`` gate runs."""
    from onnxshrink.run.measure import gate_models

    passed = failed = inconclusive = 0
    seen = []
    started = time.perf_counter()
    for _ in range(runs):
        report = gate_models(base, cand, gates=[GATE], data=data)
        check = report["gate"]["checks"][0]
        lat = report["validation"]["latency"]["cpu"]
        seen.append((lat["ratio"], *lat["ratio_ci"]))
        passed += check["passed"]
        failed += not check["passed"]
        inconclusive += check["status"] == "inconclusive"
        print(
            f"    {base.stem} vs {cand.stem}: {check['status']:12s} ratio {lat['ratio']:.3f} "
            f"[{lat['ratio_ci'][0]:.3f}, {lat['ratio_ci'][1]:.3f}] {lat['rounds']} rounds ({lat['stopped']})",
            file=sys.stderr,
            flush=True,
        )
    return passed, failed, inconclusive, seen, (time.perf_counter() - started) / max(runs, 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", default=list(DEFAULT_MODELS))
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument(
        "--skip-self", action="store_true", help="only the heavier copy (the self runs take as long again)"
    )
    args = parser.parse_args(argv)
    if not (zoo_dir() / "models").is_dir():
        print(f"no zoo at {zoo_dir()} (set ONNXSHRINK_ZOO)", file=sys.stderr)
        return 2
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_gate_latency_") as tmp:
        for name in args.models:
            base, heavy, work, k, total = build_heavier(name, Path(tmp))
            print(
                f"{name}: duplicated the first {k} of {total} nodes; "
                f"copy/original = {work[0]:.3f} [{work[1]:.3f}, {work[2]:.3f}]",
                file=sys.stderr,
                flush=True,
            )
            data = zoo_dir() / "data" / f"{name}.npz"
            same = gate_runs(base, base, data, 0 if args.skip_self else args.runs)
            more = gate_runs(base, heavy, data, args.runs)
            rows.append((name, work, same, more))
    print(
        f"\ngate '{GATE}', {args.runs} runs each "
        "(onnxshrink gate A B --data ZOO.npz; 95% interval, fail only when it lies above 1.0)"
    )
    print(
        f"{'model':26s} {'copy work':>20s} | {'self: pass/fail/incon.':>22s} {'ratios seen':>16s} | "
        f"{'~1.3x: pass/fail':>17s} {'ratios seen':>16s} | s/run"
    )
    for name, work, same, more in rows:

        def seen(r):
            ratios = [x[0] for x in r[3]]
            return f"{min(ratios):.3f}-{max(ratios):.3f}" if ratios else "-"

        print(
            f"{name:26s} {work[0]:6.3f} [{work[1]:.3f},{work[2]:.3f}] | "
            f"{same[0]:>8d}/{same[1]}/{same[2]:<11d} {seen(same):>16s} | "
            f"{more[0]:>10d}/{more[1]:<6d} {seen(more):>16s} | {(same[4] + more[4]) / 2:.1f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
