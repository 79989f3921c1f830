"""``tune``: search chains of methods for the smallest model that passes the gate.

1. Check everything that can be checked (gates, space, paths, model, data, optuna, Ray) before any trial.
2. Search: optuna proposes ``jobs`` trials at a time; the backend runs each isolated (child process
   or Ray task) and measures size and fidelity; the gates that need no timing are judged there.
3. Re-time: the gate-passing candidates on the front (size, worst cosine) are timed one at a time,
   each interleaved against the baseline, then the next smallest ones until one passes every gate
   (at most ``max_timed``).
4. Choose the smallest file that passed every gate; write it, the report and the recipe.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onnxshrink.errors import ExitCode, UsageError, one_line
from onnxshrink.ir.io import check_output_path, check_writable_file, load_model, memory_limit
from onnxshrink.plugin.method import PluginSpec
from onnxshrink.plugin.registry import default_registry
from onnxshrink.run.recipe import Recipe
from onnxshrink.run.shrink import shrink, tool_info
from onnxshrink.tune import report as rep
from onnxshrink.tune.backends import LocalBackend
from onnxshrink.tune.progress import TuneProgress
from onnxshrink.tune.ray_backend import RayBackend
from onnxshrink.tune.recipe_export import save_recipe
from onnxshrink.tune.search import Search, import_optuna
from onnxshrink.tune.space import build_space
from onnxshrink.tune.timing import latency_ratios
from onnxshrink.tune.trial import constraint
from onnxshrink.validate.data import load_feeds
from onnxshrink.validate.gate import METRICS, evaluate_gates, parse_gate
from onnxshrink.validate.size import measure_size

SEARCH_SHARE = 0.85  # of --time; the rest is kept for re-timing and writing the outputs
MIN_TRIAL_TIMEOUT_S = 5.0
MAX_REPEATS_IN_A_ROW = 100  # proposals already tried, one after the other: the search stops (the space is exhausted)
EXTRA_TIMING_PASSES = 2  # a candidate whose latency failed with a too-noisy warning is timed again up to this often


@dataclass
class TuneJob:
    model: Path
    gates: list[str]
    data: Path | None = None
    objective: str = "size"
    time_s: float | None = 600.0
    trials: int | None = None
    jobs: int | None = None
    ray: bool = False
    ray_address: str | None = None
    output: Path | None = None
    report: Path | None = None
    plugins: list[PluginSpec] = field(default_factory=list)
    space_file: Path | None = None
    resume: Path | None = None
    save_recipe: Path | None = None
    seed: int = 0
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    threads: int = 1
    trial_timeout_s: float | None = None
    trial_memory_bytes: int | None = None
    max_timed: int = 8
    allow_unavailable: bool = False


def parse_duration(text: str, option: str = "--time") -> float:
    """``90``, ``90s``, ``10m``, ``1h30m`` → seconds."""
    raw = str(text).strip().lower()
    match = re.fullmatch(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s?)?", raw)
    if not raw or not match or not any(match.groups()):
        raise UsageError(f"{option} {text!r}: expected a duration such as 90s, 10m or 1h")
    h, m, s = (float(g) if g else 0.0 for g in match.groups())
    seconds = h * 3600 + m * 60 + s
    if seconds <= 0:
        raise UsageError(f"{option} {text!r}: must be more than 0 seconds")
    return seconds


def parse_bytes(text: str) -> int:
    """``4G``, ``512M``, ``1000000`` → bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*", str(text).lower())
    if not match:
        raise UsageError(f"--trial-memory {text!r}: expected a size such as 4G or 512M")
    scale = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}[match.group(2)]
    return int(float(match.group(1)) * scale)


class _Checked:
    """What step 1 found: the space, the backend's inputs, the baseline size."""

    def __init__(self, job: TuneJob):
        if job.objective != "size":
            raise UsageError(f"--objective {job.objective!r}: the only objective is size")
        if not job.gates:
            raise UsageError("tune needs at least one --gate, e.g. --gate 'cosine>=0.99'")
        self.checks = [parse_gate(g) for g in job.gates]
        if job.trials is not None and job.trials < 1:
            raise UsageError(f"--trials must be >= 1, got {job.trials}")
        if job.jobs is not None and job.jobs < 1:
            raise UsageError(f"--jobs must be >= 1, got {job.jobs}")
        registry = default_registry()
        registry.raise_for_errors()
        self.space = build_space(registry, job.plugins or None, job.space_file)
        import_optuna()
        self.output = (
            Path(job.output) if job.output else Path(job.model).with_name(Path(job.model).stem + ".tuned.onnx")
        )
        loaded = load_model(job.model, load_external=False)
        self.external_files = list(loaded.external_files)
        check_output_path(self.output, [Path(job.model), *self.external_files])
        for path in (job.report, job.save_recipe):
            if path:
                check_writable_file(path)
        dataset = load_feeds(
            str(job.data) if job.data else None, loaded.model, input_shapes=job.input_shapes or None, seed=job.seed
        )
        self.data_warnings = list(dataset.warnings)
        self.space.leave_out_inapplicable(loaded.model)
        self.baseline_bytes = measure_size(job.model)["file_bytes"]
        self.resume = rep.read_resume(job.resume) if job.resume else None
        self.providers = sorted({c.provider for c in self.checks if METRICS[c.metric].per_provider} | {"cpu"})


def _make_backend(job: TuneJob, checked: _Checked) -> Any:
    if job.ray:
        return RayBackend(
            job.ray_address, job.jobs, Path(job.model), checked.external_files, Path(job.data) if job.data else None
        )

    return LocalBackend(job.jobs or 1)


def tune(job: TuneJob, *, console: Any = None) -> tuple[dict[str, Any], ExitCode]:
    """Run the search; returns (report, ``ExitCode.OK``, or ``GATE_FAILED`` when no model passed).

    Usage problems raise UsageError before any trial."""
    started = time.monotonic()
    checked = _Checked(job)
    backend = _make_backend(job, checked)
    workdir = Path(tempfile.mkdtemp(prefix="onnxshrink_tune_"))
    try:
        return _Tuner(job, checked, backend, workdir, started, console).run()
    finally:
        backend.close()
        shutil.rmtree(workdir, ignore_errors=True)


class _Tuner:
    def __init__(self, job: TuneJob, checked: _Checked, backend: Any, workdir: Path, started: float, console: Any):
        self.job, self.checked, self.backend, self.workdir, self.started = job, checked, backend, workdir, started
        self.deadline = started + job.time_s if job.time_s else None
        self.search_deadline = started + job.time_s * SEARCH_SHARE if job.time_s else None
        self.search = Search(
            checked.space, job.seed, len([c for c in checked.checks if not METRICS[c.metric].per_provider])
        )
        self.trials: list[dict[str, Any]] = []
        self.files: dict[int, list[str]] = {}
        self.interrupted = False
        self.progress = TuneProgress(console, self.deadline, job.trials)
        self.next_number = 0
        self.ran = 0  # trials run by this invocation (--trials counts these; resumed ones are extra)
        self.seen: dict[str, int] = {}  # configuration key -> the trial that ran it
        self.repeats_in_a_row = 0

    # ------------------------------------------------------------------ search

    def run(self) -> tuple[dict[str, Any], ExitCode]:
        self._replay()
        for name, why in self.checked.space.left_out.items():
            self.progress.say(f"tune: {name} left out: {why}")
        for point in self.checked.space.start_points():
            self.search.enqueue(point)
        try:
            self._search()
        except KeyboardInterrupt:
            self.interrupted = True
            self.progress.say("tune: interrupted; re-timing what was found (Ctrl-C again to stop now)")
        except Exception as exc:  # the report still says what happened, then exit 3
            self.progress.finish()
            if self.job.report:
                rep.write_json(
                    {**self._report(None), "error": f"{type(exc).__name__}: {one_line(exc)}"}, self.job.report
                )
            raise
        chosen = None
        try:
            self._retime()
            chosen = rep.choose(self.trials)
        except KeyboardInterrupt:
            self.interrupted = True
        self.progress.finish()
        report = self._report(chosen)
        if chosen is not None:
            self._write_output(chosen)
            if self.job.save_recipe:
                self._write_recipe(chosen)
        if self.job.report:
            rep.write_json(report, self.job.report)
        return report, ExitCode.OK if chosen is not None else ExitCode.GATE_FAILED

    def _replay(self) -> None:
        if not self.checked.resume:
            return
        replayed = 0
        for old in self.checked.resume["trials"]:
            entry = dict(old)
            entry.setdefault("gates_passed_untimed", entry.get("status") == "ok" and bool(entry.get("passed")))
            entry["timed"], entry["passed"] = False, False
            if entry.get("metrics"):
                entry["metrics"] = {**entry["metrics"], "latency_ratio": None}
            constraints = entry.get("constraints")
            if constraints is None and entry["status"] == "ok":
                constraints = _constraints_of(entry)
            result = {"status": entry["status"], "metrics": entry.get("metrics"), "constraints": constraints}
            entry["replayed"] = self.search.replay(entry["params"], result)
            replayed += entry["replayed"]
            self.trials.append(entry)
            if entry.get("same_as") is None:
                self.seen.setdefault(self._config_key(entry["chain"]), int(entry["number"]))
            self.next_number = max(self.next_number, int(entry["number"]) + 1)
        self.progress.say(
            f"tune: resumed {len(self.trials)} trials from {self.job.resume} ({replayed} replayed into the search)"
        )

    def _budget_left(self) -> bool:
        if self.job.trials is not None and self.ran >= self.job.trials:
            return False
        return self.search_deadline is None or time.monotonic() < self.search_deadline

    def _search(self) -> None:
        while self._budget_left():
            n = self.backend.jobs
            if self.job.trials is not None:
                n = min(n, self.job.trials - self.ran)
            asked = [self.search.ask() for _ in range(n)]
            specs = []
            for _number, chain, _params in asked:
                specs.append(self._spec(self.next_number, chain))
                self.next_number += 1
            same_as = self._earlier_runs(specs)
            results: list[dict[str, Any] | None] = [
                None if same is not None else self._invalid_options(spec) for spec, same in zip(specs, same_as)
            ]
            runnable = [spec for spec, result, same in zip(specs, results, same_as) if result is None and same is None]
            try:
                ran = iter(
                    self.backend.run_batch(runnable, self._trial_timeout(), self._trial_memory()) if runnable else []
                )
            except KeyboardInterrupt:
                for optuna_number, _, _ in asked:
                    self.search.forget(optuna_number)
                raise
            results = [
                result if result is not None or same is not None else next(ran)
                for result, same in zip(results, same_as)
            ]
            self.ran += len(asked)
            by_number = {t["number"]: t for t in self.trials}
            for (optuna_number, chain, params), spec, result, same in zip(asked, specs, results, same_as):
                if same is not None:  # the same configuration ran before: same seed, same bytes; reuse its result
                    earlier = by_number[same]
                    result = _reused(earlier)
                self.search.tell(optuna_number, result)
                entry = rep.trial_entry(spec["number"], chain, params, result)
                entry["constraints"] = result.get("constraints")
                if same is not None:
                    entry["same_as"] = same
                    self.repeats_in_a_row += 1
                else:
                    self.repeats_in_a_row = 0
                    self.seen.setdefault(self._config_key(spec["chain"]), spec["number"])
                self.trials.append(entry)
                by_number[entry["number"]] = entry
                if same is None and result["status"] == "ok" and result.get("gates_passed") and result.get("files"):
                    self.files[entry["number"]] = result["files"]
                else:
                    _discard(self.workdir, entry["number"])
                self.progress.trial(entry)
            self._drop_unneeded()
            if self.repeats_in_a_row >= MAX_REPEATS_IN_A_ROW:
                self.progress.say(
                    f"tune: the last {self.repeats_in_a_row} proposals were all configurations already tried; the "
                    "search stops"
                )
                return

    def _config_key(self, chain: list[dict[str, Any]]) -> str:
        """What a trial runs, every option with its value (defaults filled in): equal keys give the same model."""
        steps = []
        for step in chain:
            options = dict(step["options"])
            space = self.checked.space.methods.get(step["plugin"])
            if space is not None:
                try:
                    options = space.cls.validate_options(options)
                except UsageError:
                    pass
            steps.append([step["plugin"], sorted(options.items())])
        return json.dumps(steps, default=str)

    def _earlier_runs(self, specs: list[dict[str, Any]]) -> list[int | None]:
        """For each spec, the number of the trial that already runs its configuration (earlier, or
        earlier in this batch), or None when it is new."""
        out: list[int | None] = []
        in_batch: dict[str, int] = {}
        for spec in specs:
            key = self._config_key(spec["chain"])
            same = self.seen.get(key, in_batch.get(key))
            if same is None:
                in_batch[key] = spec["number"]
            out.append(same)
        return out

    def _invalid_options(self, spec: dict[str, Any]) -> dict[str, Any] | None:
        """A chain whose options do not go together (the method's own check) is an invalid trial, not a process."""
        for step in spec["chain"]:
            try:
                self.checked.space.methods[step["plugin"]].cls.validate_options(dict(step["options"]))
            except UsageError as exc:
                return {
                    "status": "invalid",
                    "error": exc.message,
                    "metrics": None,
                    "constraints": None,
                    "gates_passed": False,
                    "files": [],
                    "seconds": 0.0,
                }
        return None

    def _spec(self, number: int, chain: list[PluginSpec]) -> dict[str, Any]:
        job = self.job
        return {
            "number": number,
            "chain": [{"plugin": s.plugin, "options": dict(s.options)} for s in chain],
            "model": str(Path(job.model).resolve()),
            "data": str(Path(job.data).resolve()) if job.data else None,
            "input_shapes": {k: list(v) for k, v in job.input_shapes.items()},
            "seed": job.seed,
            "gates": list(job.gates),
            "workdir": str(self.workdir),
            "keep": True,
        }

    def _trial_timeout(self) -> float:
        limit = self.job.trial_timeout_s or (max(60.0, self.job.time_s / 3) if self.job.time_s else 900.0)
        if self.deadline is not None:
            limit = min(limit, max(self.deadline - time.monotonic(), MIN_TRIAL_TIMEOUT_S))
        return limit

    def _trial_memory(self) -> int | None:
        if self.job.trial_memory_bytes:
            return self.job.trial_memory_bytes

        if self.backend.name != "local":
            return None  # nodes differ; give --trial-memory to set one
        # Address space, not resident memory: onnxruntime and numpy reserve more than they touch.
        return max(memory_limit() // max(self.backend.jobs, 1) * 2, 4 * 2**30)

    def _drop_unneeded(self) -> None:
        keep = set(rep.to_time(self.trials, self.job.max_timed))
        for number in [n for n in self.files if n not in keep]:
            _discard(self.workdir, number)
            del self.files[number]

    # ------------------------------------------------------------------ re-timing

    def _retime(self) -> None:
        candidates = rep.to_time(self.trials, self.job.max_timed)
        if not candidates:
            return
        front = set(rep.untimed_front(self.trials))
        rounds = [[n for n in candidates if n in front], [n for n in candidates if n not in front]]
        for numbers in rounds:
            if not numbers:
                continue
            self._materialize(numbers)
            ready = [(n, Path(self.files[n][0])) for n in numbers if n in self.files]
            self.progress.say(f"tune: re-timing {len(ready)} candidate(s) one at a time against the baseline")
            seconds = (
                None
                if self.deadline is None
                else max(self.deadline - time.monotonic(), 0.0) / len(self.checked.providers)
            )
            latencies = self.backend.time_candidates(self._timing_job(), ready, self.checked.providers, seconds)
            by_number = {t["number"]: t for t in self.trials}
            for number, latency in latencies.items():
                self._judge_latency(by_number[number], latency)
            self._time_noisy_again([(n, path) for n, path in ready if n in latencies], by_number)
            if any(by_number[n]["passed"] for n in latencies):
                return

    def _judge_latency(self, trial: dict[str, Any], latency: dict[str, Any]) -> None:
        """Record one timing of a candidate and judge its latency gates (replacing an earlier timing's verdict)."""
        latency_checks = [c for c in self.checked.checks if METRICS[c.metric].per_provider]
        trial["timed"] = True
        trial["metrics"]["latency_ratio"] = latency_ratios(latency)
        trial["latency"] = latency
        gate = evaluate_gates(
            latency_checks, {"validation": {"latency": latency}}, allow_unavailable=self.job.allow_unavailable
        )
        untimed = [c for c in trial["gate_checks"] if not METRICS[c["metric"]].per_provider]
        trial["gate_checks"] = [*untimed, *gate["checks"]]
        trial["passed"] = bool(trial["gates_passed_untimed"] and gate["passed"])
        trial.setdefault("latency_passes", []).append(
            {ep: {k: entry.get(k) for k in ("ratio", "ratio_ci", "rounds", "warning")} for ep, entry in latency.items()}
        )

    def _time_noisy_again(self, ready: list[tuple[int, Path]], by_number: dict[int, dict[str, Any]]) -> None:
        """A candidate whose latency gate failed on timings flagged too noisy to trust is timed again
        (fresh sessions, up to EXTRA_TIMING_PASSES more passes, within the time left); the last timing
        decides. A failure on clean timings (no warning) is final."""
        for _ in range(EXTRA_TIMING_PASSES):
            again = [(n, path) for n, path in ready if _failed_on_noise(by_number[n])]
            if not again or (self.deadline is not None and time.monotonic() >= self.deadline):
                return
            self.progress.say(
                f"tune: timing {len(again)} candidate(s) again: their latency failed on timings too noisy to trust"
            )
            seconds = (
                None
                if self.deadline is None
                else max(self.deadline - time.monotonic(), 0.0) / len(self.checked.providers)
            )
            for number, latency in self.backend.time_candidates(
                self._timing_job(), again, self.checked.providers, seconds
            ).items():
                self._judge_latency(by_number[number], latency)

    def _materialize(self, numbers: list[int]) -> None:
        """Trials replayed from --resume have no candidate file: run them again (same seed, same bytes)."""
        missing = [t for t in self.trials if t["number"] in numbers and t["number"] not in self.files]
        if not missing:
            return
        chains = [[PluginSpec(s["plugin"], s["options"]) for s in t["chain"]] for t in missing]
        specs = [self._spec(t["number"], chain) for t, chain in zip(missing, chains)]
        for start in range(0, len(specs), self.backend.jobs):
            batch = specs[start : start + self.backend.jobs]
            for spec, result in zip(
                batch, self.backend.run_batch(batch, self.job.trial_timeout_s or 900.0, self._trial_memory())
            ):
                if result["status"] == "ok" and result.get("files"):
                    self.files[spec["number"]] = result["files"]

    def _timing_job(self) -> Any:
        return _TimingJob(
            str(Path(self.job.model).resolve()),
            str(Path(self.job.data).resolve()) if self.job.data else None,
            {k: list(v) for k, v in self.job.input_shapes.items()},
            self.job.seed,
            self.job.threads,
        )

    # ------------------------------------------------------------------ outputs

    def _chosen_trial(self, number: int) -> dict[str, Any]:
        return next(t for t in self.trials if t["number"] == number)

    def _write_output(self, number: int) -> None:
        files = self.files[number]
        output = self.checked.output
        if len(files) == 1:
            tmp = output.with_name(f".{output.name}.tmp")
            shutil.copyfile(files[0], tmp)
            os.replace(tmp, output)
            return

        trial = self._chosen_trial(number)
        shrink(
            Recipe(
                model=Path(self.job.model),
                output=output,
                seed=self.job.seed,
                validate=False,
                steps=[PluginSpec(s["plugin"], s["options"]) for s in trial["chain"]],
                data_path=self.job.data,
                input_shapes=dict(self.job.input_shapes),
            )
        )

    def _write_recipe(self, number: int) -> None:
        trial = self._chosen_trial(number)
        save_recipe(
            self.job.save_recipe,
            model=Path(self.job.model),
            output=self.checked.output,
            seed=self.job.seed,
            chain=trial["chain"],
            data=self.job.data,
            input_shapes=self.job.input_shapes,
            gates=self.job.gates,
            trial=number,
        )

    def _report(self, chosen: int | None) -> dict[str, Any]:
        return {
            "schema": rep.SCHEMA,
            "tool": tool_info(),
            "model": {"path": str(self.job.model), "file_bytes": self.checked.baseline_bytes},
            "data": str(self.job.data) if self.job.data else None,
            "data_warnings": self.checked.data_warnings,
            "gates": list(self.job.gates),
            "objective": self.job.objective,
            "seed": self.job.seed,
            "budget": {"time_s": self.job.time_s, "trials": self.job.trials},
            "backend": self.backend.describe(),
            "space": self.checked.space.describe(),
            "providers": self.checked.providers,
            "trials": self.trials,
            "pareto": rep.final_front(self.trials, self.checked.providers),
            "chosen": chosen,
            "output": str(self.checked.output) if chosen is not None else None,
            "recipe": str(self.job.save_recipe) if chosen is not None and self.job.save_recipe else None,
            "interrupted": self.interrupted,
            "seconds": round(time.monotonic() - self.started, 3),
        }


@dataclass
class _TimingJob:
    model: str
    data: str | None
    input_shapes: dict[str, list[int]]
    seed: int
    threads: int


def _constraints_of(entry: dict[str, Any]) -> list[float]:
    return [constraint(c) for c in entry.get("gate_checks") or [] if not METRICS[c["metric"]].per_provider] or [0.0]


def _failed_on_noise(trial: dict[str, Any]) -> bool:
    """Met every other gate, failed a latency gate, and that provider's timing carries a warning (noisy, wide)."""
    if trial["passed"] or not trial["gates_passed_untimed"]:
        return False
    failed = [c for c in trial["gate_checks"] if METRICS[c["metric"]].per_provider and not c["passed"]]
    latency = trial.get("latency") or {}
    return bool(failed) and all((latency.get(c.get("provider")) or {}).get("warning") for c in failed)


def _reused(earlier: dict[str, Any]) -> dict[str, Any]:
    """A trial result made from an earlier trial entry of the same configuration (no process ran)."""
    metrics = dict(earlier["metrics"], latency_ratio=None) if earlier.get("metrics") else None
    checks = [c for c in earlier.get("gate_checks") or [] if not METRICS[c["metric"]].per_provider]
    return {
        "status": earlier["status"],
        "error": earlier.get("error"),
        "metrics": metrics,
        "fidelity": earlier.get("fidelity"),
        "gate_checks": checks,
        "constraints": earlier.get("constraints"),
        "gates_passed": bool(earlier.get("gates_passed_untimed")),
        "files": [],
        "seconds": 0.0,
    }


def _discard(workdir: Path, number: int) -> None:
    shutil.rmtree(workdir / f"trial_{number}", ignore_errors=True)
