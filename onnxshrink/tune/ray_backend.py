"""Trials as Ray tasks: ``--ray`` starts a local Ray runtime, ``--ray ADDRESS`` joins a cluster.

No shared filesystem is assumed: the model (with its external data) and the data travel as bytes
through Ray's object store (``ray.put`` once, then passed by reference); each task writes them into a
temporary folder on its node (once per node and run) and runs the trial there in a child process with
the same time and memory limits as on one machine. Candidates that pass the gates come back as bytes.
The candidates are timed by a single task, on one worker, one after the other, after the search.
Needs ``pip install 'onnxshrink[ray]'``; the nodes need onnxshrink installed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from onnxshrink.errors import UsageError, one_line
from onnxshrink.tune.trial import candidate_path, discard, run_isolated


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UsageError("--ray needs Ray, which is not installed: pip install 'onnxshrink[ray]'") from None
    return ray


def read_files(path: Path, extra: list[Path] | None = None) -> dict[str, bytes]:
    """``{name relative to the file's folder: bytes}`` for a file (plus ``extra`` files beside it) or a folder."""
    path = Path(path)
    if path.is_dir():
        return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}
    out = {path.name: path.read_bytes()}
    for p in extra or []:
        out[str(Path(p).resolve().relative_to(path.resolve().parent))] = Path(p).read_bytes()
    return out


def write_files(folder: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)


def _materialize(
    key: str, model_name: str, model_files: dict[str, bytes], data_name: str | None, data_files: dict[str, bytes] | None
) -> tuple[Path, Path | None, Path]:
    """Model and data written once per node and run into ``<tmp>/onnxshrink_ray_<key>``; returns (model, data, root)."""
    root = Path(tempfile.gettempdir()) / f"onnxshrink_ray_{key}"
    ready = root / ".ready"
    if not ready.exists():
        staging = Path(tempfile.mkdtemp(prefix=f"onnxshrink_ray_{key}_"))
        write_files(staging / "model", model_files)
        if data_files is not None:
            write_files(staging / "data", data_files)
        (staging / ".ready").write_text("ok")
        try:
            os.rename(staging, root)
        except OSError:  # another task on this node won the race
            shutil.rmtree(staging, ignore_errors=True)
    data = None
    if data_name is not None:
        data = root / "data" / data_name if data_name != "." else root / "data"
    return root / "model" / model_name, data, root


def _remote_trial(
    spec: dict[str, Any],
    shipped: dict[str, Any],
    model_files: dict[str, bytes],
    data_files: dict[str, bytes] | None,
    timeout_s: float,
    memory_bytes: int | None,
) -> dict[str, Any]:
    model, data, root = _materialize(
        shipped["key"], shipped["model_name"], model_files, shipped["data_name"], data_files
    )
    spec = {
        **spec,
        "model": str(model),
        "data": str(data) if data else None,
        "workdir": str(root / "trials" / uuid.uuid4().hex),
    }
    result = run_isolated(spec, timeout_s, memory_bytes)
    if result["status"] == "ok" and result.get("gates_passed") and spec.get("keep"):
        folder = candidate_path(spec).parent
        result["model_files"] = {str(Path(f).relative_to(folder)): Path(f).read_bytes() for f in result["files"]}
    result["files"] = []
    result["node"] = os.uname().nodename
    shutil.rmtree(Path(spec["workdir"]), ignore_errors=True)
    return result


def _remote_timing(
    shipped: dict[str, Any],
    model_files: dict[str, bytes],
    data_files: dict[str, bytes] | None,
    candidates: list[tuple[int, dict[str, bytes]]],
    providers: list[str],
    input_shapes: dict,
    seed: int,
    threads: int,
    seconds: float | None,
) -> dict[int, dict[str, Any]]:
    from onnxshrink.tune.timing import evaluation_feeds, time_candidates

    model, data, root = _materialize(
        shipped["key"], shipped["model_name"], model_files, shipped["data_name"], data_files
    )
    folder = Path(tempfile.mkdtemp(prefix="onnxshrink_timing_"))
    try:
        paths = []
        for number, files in candidates:
            write_files(folder / str(number), files)
            paths.append((number, folder / str(number) / "candidate.onnx"))
        feeds = evaluation_feeds(model, data, input_shapes, seed)
        out = time_candidates(model, paths, feeds, providers, threads=threads, seconds=seconds)
        return {
            number: {"node": os.uname().nodename, **{ep: entry for ep, entry in lat.items()}}
            for number, lat in out.items()
        }
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _remote_cleanup(key: str) -> None:
    shutil.rmtree(Path(tempfile.gettempdir()) / f"onnxshrink_ray_{key}", ignore_errors=True)


class RayBackend:
    """Trials as Ray tasks (one CPU each); ``jobs`` at a time."""

    name = "ray"

    def __init__(
        self, address: str | None, jobs: int | None, model: Path, external_files: list[Path], data: Path | None
    ):
        ray = self.ray = import_ray()
        self.started = False
        if not ray.is_initialized():
            try:
                if address:
                    ray.init(address=address, log_to_driver=False)
                else:
                    # a runtime of its own, even when `ray start` left a cluster running on this machine
                    ray.init(address="local", include_dashboard=False, log_to_driver=False)
            except Exception as exc:  # noqa: BLE001 - a bad address is the user's input
                raise UsageError(
                    f"--ray {address or ''}: cannot start or join Ray: {one_line(exc)}".replace("  ", " ")
                ) from None
            self.started = True
        self.address = address
        cpus = int(ray.cluster_resources().get("CPU", 1))
        self.jobs = jobs or max(1, cpus)
        model_files = read_files(model, external_files)
        data_files = read_files(data) if data else None
        digest = hashlib.sha256()
        for files in (model_files, data_files or {}):
            for name, blob in sorted(files.items()):
                digest.update(name.encode() + b"\0" + blob)
        self.shipped = {
            "key": digest.hexdigest()[:16] + "_" + uuid.uuid4().hex[:8],
            "model_name": model.name,
            "data_name": None if data is None else ("." if Path(data).is_dir() else Path(data).name),
        }
        self.model_ref = ray.put(model_files)
        self.data_ref = ray.put(data_files)
        self._trial = ray.remote(num_cpus=1, max_retries=0)(_remote_trial)
        self._timing = ray.remote(num_cpus=1, max_retries=0)(_remote_timing)

    def run_batch(
        self, specs: list[dict[str, Any]], timeout_s: float, memory_bytes: int | None
    ) -> list[dict[str, Any]]:
        ray = self.ray
        refs = [
            self._trial.remote(spec, self.shipped, self.model_ref, self.data_ref, timeout_s, memory_bytes)
            for spec in specs
        ]
        started = time.monotonic()
        results: dict[int, dict[str, Any]] = {}
        pending = list(refs)
        try:
            while pending:
                slack = timeout_s + 60 - (time.monotonic() - started)
                done, pending = ray.wait(pending, num_returns=1, timeout=max(slack, 0.1))
                if not done:
                    for ref in pending:
                        ray.cancel(ref, force=True)
                        results[refs.index(ref)] = {
                            "status": "timeout",
                            "error": f"Ray task gave no result within {timeout_s + 60:.0f} s",
                            "metrics": None,
                            "constraints": None,
                            "gates_passed": False,
                            "files": [],
                        }
                    break
                for ref in done:
                    i = refs.index(ref)
                    try:
                        results[i] = ray.get(ref)
                    except Exception as exc:  # noqa: BLE001 - a lost worker is a failed trial
                        results[i] = {
                            "status": "failed",
                            "error": f"Ray task failed: {one_line(exc)}",
                            "metrics": None,
                            "constraints": None,
                            "gates_passed": False,
                            "files": [],
                        }
                    results[i].setdefault("seconds", round(time.monotonic() - started, 3))
        except KeyboardInterrupt:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
        out = []
        for i, spec in enumerate(specs):
            result = results[i]
            files = result.pop("model_files", None)
            if files:
                folder = candidate_path(spec).parent
                discard(spec)
                write_files(folder, files)
                result["files"] = [str(folder / name) for name in files]
            out.append(result)
        return out

    def time_candidates(
        self, job: Any, candidates: list[tuple[int, Path]], providers: list[str], seconds: float | None
    ) -> dict[int, dict[str, Any]]:
        shipped = [
            (number, read_files(path, [p for p in path.parent.iterdir() if p != path])) for number, path in candidates
        ]
        ref = self._timing.remote(
            self.shipped,
            self.model_ref,
            self.data_ref,
            shipped,
            providers,
            job.input_shapes,
            job.seed,
            job.threads,
            seconds,
        )
        out = self.ray.get(ref)
        nodes = {v.pop("node") for v in out.values()}
        self.timing_node = nodes.pop() if nodes else None
        return out

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "jobs": self.jobs,
            "address": self.address,
            "timing_node": getattr(self, "timing_node", None),
        }

    def close(self) -> None:
        """Remove the model and data copies from every node, and stop the runtime if tune started it."""
        try:
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            cleanup = self.ray.remote(num_cpus=0, max_retries=0)(_remote_cleanup)
            refs = [
                cleanup.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)).remote(
                    self.shipped["key"]
                )
                for node in self.ray.nodes()
                if node.get("Alive")
            ]
            self.ray.wait(refs, num_returns=len(refs), timeout=30)
        finally:
            if self.started:
                self.ray.shutdown()
