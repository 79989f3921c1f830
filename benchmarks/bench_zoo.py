"""Every method's defaults and the main recipes over every real model of the zoo, in one table.

The zoo (``make zoo``; folder from ``ONNXSHRINK_ZOO``, default ``<repo>/.zoo``) holds real pretrained
models with realistic feeds: ``models/NAME.onnx`` and ``data/NAME.npz`` (axis 0 stacks feeds; the
first half is for calibration, the second half for evaluation).

For each model and each chain, the real pipeline runs: the ``onnxshrink`` CLI in a subprocess with
``--data`` set to a temporary ``.npz`` that holds only the calibration half (shrink splits that again
when a method calibrates; the evaluation half is never given to the method) and ``--no-validate``.
The output is then judged here, against the original, on the evaluation half only:

* exit code (``timeout`` when the run passed ``--timeout``), and whether the output loads in
  onnxruntime and runs every evaluation feed (``valid``);
* file-size ratio (bytes on disk, external data included);
* CPU latency ratio: onnxruntime CPU EP, 1 thread, A B A B interleaved after warm-up on the first
  evaluation feed, ratio of the medians;
* worst per-feed cosine of each float output: one ``session.run`` per feed for the original and the
  output model, the cosine of each float output per feed, then the lowest over feeds; the table shows
  the lowest over outputs and names that output;
* whether every declared output keeps its name, dtype and shape (declared and as run);
* seconds of the shrink run.

    python benchmarks/bench_zoo.py                             # everything (slow: tens of minutes)
    python benchmarks/bench_zoo.py --models open_nsfw,swift_f0 --methods int_quant,weight_prune
    python benchmarks/bench_zoo.py --json zoo.json --markdown zoo.md --timeout 600 --jobs 2

``--methods`` selects rows by method: a method name selects its default row and every chain that
uses it; ``--chains`` selects rows by exact label (``--chains 'int_quant,weight_prune > sparse_store'``).
``--from-json F`` reprints (and with ``--markdown`` rewrites) the table of an earlier ``--json``.
Latency is taken one run at a time even with ``--jobs`` (only the shrink runs overlap).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_TIMEOUT_S = 900
LATENCY_WARMUP = 3
LATENCY_REPEATS = 20
LATENCY_MIN_TIME_S = 0.5

# The defaults the issue judges first run first, so that a cut-short run has them for every model.
FIRST = ("int_quant", "weight_prune")
# The main recipes, beside each method's defaults. Each step is a --plugin spec.
RECIPES: list[tuple[str, ...]] = [
    ("weight_prune", "sparse_store"),
    ("int_quant:bits=4",),
    ("gptq:bits=4",),
    ("weight_prune", "int_quant"),
]


# ------------------------------------------------------------------------------------------ the zoo


def zoo_dir() -> Path:
    """The zoo folder: ``$ONNXSHRINK_ZOO`` or ``<repo>/.zoo``."""
    return Path(os.environ.get("ONNXSHRINK_ZOO") or ROOT / ".zoo")


def zoo_model_names(zoo: Path) -> list[str]:
    """Names with both ``models/NAME.onnx`` and ``data/NAME.npz``, sorted."""
    if not (zoo / "models").is_dir():
        return []
    return sorted(p.stem for p in (zoo / "models").glob("*.onnx") if (zoo / "data" / f"{p.stem}.npz").is_file())


@dataclass
class ZooModel:
    """One zoo model with its feeds split into the calibration and evaluation halves."""

    name: str
    path: Path
    arrays: dict[str, np.ndarray]
    _baseline: list[dict[str, np.ndarray]] | None = field(default=None, repr=False)

    @property
    def n_feeds(self) -> int:
        return len(next(iter(self.arrays.values())))

    def feeds(self, lo: int, hi: int) -> list[dict[str, np.ndarray]]:
        return [{k: np.asarray(a[i]) for k, a in self.arrays.items()} for i in range(lo, hi)]

    def evaluation_feeds(self) -> list[dict[str, np.ndarray]]:
        return self.feeds(self.n_feeds // 2, self.n_feeds)

    def write_calibration(self, path: Path) -> Path:
        """The calibration half (feeds ``[0, N/2)``) as a stacked ``.npz``: what ``--data`` gets."""
        half = self.n_feeds // 2
        np.savez(path, **{k: a[:half] for k, a in self.arrays.items()})
        return path

    def baseline_outputs(self) -> list[dict[str, np.ndarray]]:
        """The original model's outputs on the evaluation half (computed once)."""
        if self._baseline is None:
            self._baseline = run_feeds(session(self.path), self.evaluation_feeds())
        return self._baseline


def load_zoo_model(zoo: Path, name: str) -> ZooModel:
    with np.load(zoo / "data" / f"{name}.npz", allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    return ZooModel(name, zoo / "models" / f"{name}.onnx", arrays)


# ------------------------------------------------------------------------------------------ chains


@dataclass(frozen=True)
class Chain:
    """A row of the table: a label and the ``--plugin`` specs, in order."""

    steps: tuple[str, ...]

    @property
    def label(self) -> str:
        return " > ".join(self.steps)

    def uses(self, method: str) -> bool:
        return any(s.split(":", 1)[0] == method for s in self.steps)


def builtin_methods() -> list[str]:
    """Every built-in method registered (the defaults rows), sorted."""
    from onnxshrink.plugin.registry import default_registry

    registry = default_registry()
    return sorted(name for name, info in registry.methods.items() if info.builtin)


def default_chains(methods: list[str] | None = None) -> list[Chain]:
    """Each built-in method with no options (``FIRST`` first), then the main recipes; ``methods`` filters."""
    ordered = sorted(builtin_methods(), key=lambda m: (m not in FIRST, FIRST.index(m) if m in FIRST else 0, m))
    chains = [Chain((m,)) for m in ordered] + [Chain(r) for r in RECIPES]
    if methods:
        chains = [c for c in chains if any(c.uses(m) or c.label == m for m in methods)]
    return chains


# ------------------------------------------------------------------------------------------ running


def onnxshrink_command() -> list[str]:
    exe = Path(sys.executable).with_name("onnxshrink")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "onnxshrink"]


def run_chain(model: ZooModel, chain: Chain, calibration_npz: Path, folder: Path, timeout_s: float) -> dict[str, Any]:
    """Run the CLI on ``model`` with ``chain`` and the calibration half; never raises for a failed run.

    ``{"status": "ok" | "exit N" | "timeout", "exit_code", "seconds", "error", "output", "report"}``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    output = folder / f"{model.name}.out.onnx"
    report_path = folder / "report.json"
    cmd = [*onnxshrink_command(), str(model.path)]
    for step in chain.steps:
        cmd += ["--plugin", step]
    cmd += [
        "--data",
        str(calibration_npz),
        "--no-validate",
        "--seed",
        "0",
        "-o",
        str(output),
        "--report",
        str(report_path),
        "-q",
    ]
    started = time.perf_counter()
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, cwd=folder)
    except subprocess.TimeoutExpired:
        return {
            "status": "timeout",
            "exit_code": None,
            "seconds": round(time.perf_counter() - started, 1),
            "error": f"no result within {timeout_s:g} s",
            "output": None,
            "report": None,
        }
    seconds = round(time.perf_counter() - started, 1)
    lines = [ln for ln in (done.stderr + done.stdout).splitlines() if ln.strip()]
    report = None
    if report_path.is_file():
        try:
            report = json.loads(report_path.read_text())
        except ValueError:
            report = None
    ok = done.returncode in (0, 1) and output.is_file()
    return {
        "status": "ok" if done.returncode == 0 else f"exit {done.returncode}",
        "exit_code": done.returncode,
        "seconds": seconds,
        "error": lines[-1][:300] if done.returncode != 0 and lines else None,
        "output": str(output) if ok else None,
        "report": report,
    }


# ------------------------------------------------------------------------------------------ judging


def session(path: str | os.PathLike):
    """An onnxruntime CPU session, 1 intra-op thread, sequential, quiet."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_feeds(sess, feeds: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    """One ``session.run`` per feed; each result as ``{output name: array}``."""
    names = [o.name for o in sess.get_outputs()]
    return [dict(zip(names, sess.run(None, feed))) for feed in feeds]


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine of two arrays, flattened, in float64; 1.0 when both are all zero, nan when not finite."""
    x = np.asarray(a, dtype=np.float64).ravel()
    y = np.asarray(b, dtype=np.float64).ravel()
    if x.shape != y.shape:
        return float("nan")
    nx, ny = np.linalg.norm(x), np.linalg.norm(y)
    if not (np.isfinite(nx) and np.isfinite(ny)):
        return float("nan")
    if nx == 0 and ny == 0:
        return 1.0
    if nx == 0 or ny == 0:
        return 0.0
    return float(np.dot(x, y) / (nx * ny))


def worst_cosines(baseline: list[dict[str, np.ndarray]], candidate: list[dict[str, np.ndarray]]) -> dict[str, dict]:
    """Per float output: ``{"worst": lowest per-feed cosine (nan counts as lowest), "feed": its index}``."""
    out: dict[str, dict] = {}
    for i, (base, cand) in enumerate(zip(baseline, candidate)):
        for name, ref in base.items():
            if ref.dtype.kind != "f":
                continue
            c = cosine(ref, cand[name])
            seen = out.get(name)
            if seen is None or _lower(c, seen["worst"]):
                out[name] = {"worst": c, "feed": i}
    return out


def _lower(c: float, than: float) -> bool:
    """``c`` is worse than ``than``: nan is the worst of all."""
    return (np.isnan(c) and not np.isnan(than)) or c < than


def declared_outputs(path: str | os.PathLike) -> list[tuple[str, int, tuple]]:
    """(name, elem_type, dims) of each graph output; a dim is its value or its symbolic name."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    result = []
    for o in model.graph.output:
        t = o.type.tensor_type
        dims = (
            tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim)
            if t.HasField("shape")
            else None
        )
        result.append((o.name, t.elem_type, dims))
    return result


def outputs_mismatch(original: Path, output: Path, baseline: list[dict], candidate: list[dict]) -> str | None:
    """None when every declared output keeps name, dtype and shape, declared and as run; else what differs."""
    want, got = declared_outputs(original), declared_outputs(output)
    if want != got:
        return f"declared outputs {want} became {got}"
    for i, (base, cand) in enumerate(zip(baseline, candidate)):
        for name, ref in base.items():
            if cand[name].shape != ref.shape or cand[name].dtype != ref.dtype:
                return (
                    f"output {name!r} on evaluation feed {i}: "
                    f"{ref.dtype}{list(ref.shape)} became {cand[name].dtype}{list(cand[name].shape)}"
                )
    return None


def file_bytes(path: str | os.PathLike) -> int:
    from onnxshrink.validate.size import measure_size

    return int(measure_size(path)["file_bytes"])


def latency_ratio(original: Path, output: Path, feed: dict[str, np.ndarray]) -> float:
    """Median time of the output model / median time of the original, A B A B interleaved, 1 thread."""
    from onnxshrink.validate.latency import interleave

    a, b = session(original), session(output)
    times_a, times_b = interleave(
        lambda: a.run(None, feed),
        lambda: b.run(None, feed),
        LATENCY_WARMUP,
        LATENCY_REPEATS,
        min_time_s=LATENCY_MIN_TIME_S,
    )
    return statistics.median(times_b) / statistics.median(times_a)


def judge(model: ZooModel, output: str | os.PathLike | None, *, latency: bool = True) -> dict[str, Any]:
    """Measure an output model against the original on the evaluation half (see the module docstring)."""
    result: dict[str, Any] = {"valid": False}
    if output is None:
        return result
    output = Path(output)
    result["size_ratio"] = file_bytes(output) / file_bytes(model.path)
    feeds = model.evaluation_feeds()
    try:
        candidate = run_feeds(session(output), feeds)
    except Exception as e:  # noqa: BLE001 - an output that onnxruntime refuses is a row, not a crash
        result["invalid_reason"] = " ".join(str(e).split())[:300]
        return result
    result["valid"] = True
    baseline = model.baseline_outputs()
    result["outputs_mismatch"] = outputs_mismatch(model.path, output, baseline, candidate)
    per_output = worst_cosines(baseline, candidate)
    result["cosine"] = per_output
    if per_output:
        name = min(per_output, key=lambda n: (not np.isnan(per_output[n]["worst"]), per_output[n]["worst"]))
        result["worst_output"], result["worst_cosine"] = name, per_output[name]["worst"]
    if latency:
        result["latency_ratio"] = latency_ratio(model.path, output, feeds[0])
    return result


def step_notes(report: dict | None) -> str:
    """A short note per step: the mode it chose or the sparsity it reached, and its first warning."""
    if not report:
        return ""
    notes = []
    for step in report.get("steps", []):
        stats = step.get("stats") or {}
        bits = [f"{k}={stats[k]}" for k in ("mode", "sparsity") if isinstance(stats.get(k), (str, int, float))]
        bits += (step.get("warnings") or [])[:1]
        if bits:
            notes.append(f"{step.get('plugin')}: " + ", ".join(str(b) for b in bits))
    return "; ".join(notes)[:200]


# ------------------------------------------------------------------------------------------ the table


def run_all(
    names: list[str], chains: list[Chain], zoo: Path, timeout_s: float, jobs: int, log=print, on_row=None
) -> list[dict]:
    """Every (model, chain) pair, chain by chain (so a cut-short run has every model's first chains).

    Shrink runs overlap up to ``jobs``; measurements run one at a time, and ``on_row(rows so far)`` is
    called after each. Rows come back sorted by model, then chain.
    """
    rows: list[dict] = []
    measuring = threading.Lock()
    with tempfile.TemporaryDirectory(prefix="bench-zoo-") as tmp:
        models = {n: load_zoo_model(zoo, n) for n in names}
        calibration = {n: m.write_calibration(Path(tmp) / f"{n}.calibration.npz") for n, m in models.items()}

        def one(job: tuple[int, str, Chain]) -> dict:
            index, name, chain = job
            folder = Path(tmp) / f"run{index}"
            run = run_chain(models[name], chain, calibration[name], folder, timeout_s)
            with measuring:
                row = {"model": name, "chain": chain.label, **{k: v for k, v in run.items() if k != "report"}}
                row["note"] = step_notes(run["report"])
                row["steps"] = (run["report"] or {}).get("steps")
                try:
                    row.update(judge(models[name], run["output"]))
                except Exception as e:  # noqa: BLE001 - a measuring failure is a row too
                    row["valid"], row["invalid_reason"] = False, f"measuring failed: {' '.join(str(e).split())[:200]}"
                log(format_row(row))
                rows.append(row)
                if on_row:
                    on_row(_sorted(rows, chains))
            shutil.rmtree(folder, ignore_errors=True)
            return row

        work = [(i, n, c) for i, (c, n) in enumerate((c, n) for c in chains for n in names)]
        log(header())
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            list(pool.map(one, work))
    return _sorted(rows, chains)


def _sorted(rows: list[dict], chains: list[Chain]) -> list[dict]:
    order = {c.label: i for i, c in enumerate(chains)}
    return sorted(rows, key=lambda r: (r["model"], order.get(r["chain"], len(order))))


COLUMNS = (
    "model",
    "method / recipe",
    "exit",
    "valid",
    "size",
    "cpu latency",
    "worst cosine",
    "worst output",
    "seconds",
    "note",
)


def _cells(row: dict) -> list[str]:
    exit_cell = "timeout" if row["status"] == "timeout" else str(row["exit_code"])
    valid = "yes" if row.get("valid") else "no"
    if row.get("valid") and row.get("outputs_mismatch"):
        valid = "yes, outputs changed"
    size = f"{row['size_ratio']:.3f}x" if "size_ratio" in row else "-"
    lat = f"{row['latency_ratio']:.3f}x" if "latency_ratio" in row else "-"
    cos = f"{row['worst_cosine']:.5f}" if "worst_cosine" in row else "-"
    note = row.get("error") or row.get("invalid_reason") or row.get("outputs_mismatch") or row.get("note") or ""
    return [
        row["model"],
        row["chain"],
        exit_cell,
        valid,
        size,
        lat,
        cos,
        str(row.get("worst_output", "-")),
        f"{row['seconds']:.1f}",
        note,
    ]


def header() -> str:
    return " | ".join(COLUMNS)


def format_row(row: dict) -> str:
    return " | ".join(_cells(row))


def markdown_table(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        cells = [c.replace("|", "\\|") for c in _cells(row)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_zoo.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", help="comma-separated zoo model names (default: all)")
    parser.add_argument(
        "--methods", help="comma-separated methods or row labels (default: every built-in method and recipe)"
    )
    parser.add_argument(
        "--chains", help="comma-separated exact row labels, e.g. 'int_quant,weight_prune > sparse_store'"
    )
    parser.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds per shrink run (default %(default)s)"
    )
    parser.add_argument("--jobs", type=int, default=1, help="shrink runs at once (default 1)")
    parser.add_argument("--json", type=Path, help="write every row, with per-output cosines and step stats, here")
    parser.add_argument("--markdown", type=Path, help="write the table as Markdown here (for docs/benchmarks.md)")
    parser.add_argument(
        "--from-json", type=Path, help="run nothing: print (and --markdown) the rows of an earlier --json"
    )
    args = parser.parse_args([] if argv is None else argv)
    if args.from_json:
        rows = json.loads(args.from_json.read_text())
        for row in rows:
            row["note"] = step_notes({"steps": row.get("steps") or []})
        if args.markdown:
            args.markdown.write_text(markdown_table(rows))
        print(header())
        for row in rows:
            print(format_row(row))
        return 0

    zoo = zoo_dir()
    available = zoo_model_names(zoo)
    if not available:
        print(f"zoo: skipped (no models in {zoo}; run `make zoo` or set ONNXSHRINK_ZOO)")
        return 0
    names = available
    if args.models:
        names = [n.strip() for n in args.models.split(",") if n.strip()]
        unknown = [n for n in names if n not in available]
        if unknown:
            print(f"unknown zoo model(s) {unknown}; have: {available}", file=sys.stderr)
            return 2
    methods = [m.strip() for m in args.methods.split(",")] if args.methods else None
    chains = default_chains(methods)
    if args.chains:
        labels = [c.strip() for c in args.chains.split(",") if c.strip()]
        chains = [c for c in chains if c.label in labels]
    if not chains:
        print(f"--methods/--chains match no row; rows: {[c.label for c in default_chains()]}", file=sys.stderr)
        return 2

    started = time.perf_counter()
    print(
        f"zoo: {zoo}, {len(names)} models x {len(chains)} chains, timeout {args.timeout:g} s, jobs {args.jobs}",
        flush=True,
    )

    def write(rows: list[dict]) -> None:  # after every row, so that a cut-short run keeps what it measured
        if args.json:
            args.json.write_text(json.dumps(rows, indent=1, default=_json_default) + "\n")
        if args.markdown:
            args.markdown.write_text(markdown_table(rows))

    rows = run_all(names, chains, zoo, args.timeout, args.jobs, log=lambda line: print(line, flush=True), on_row=write)
    print(f"({len(rows)} runs in {time.perf_counter() - started:.0f} s)")
    print("\n" + header())
    for row in rows:
        print(format_row(row))
    return 0


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return str(value)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
