"""Where trials run: child processes on this machine (``LocalBackend``) or Ray tasks (``tune.ray_backend``).

A backend runs one batch of trial specs at a time (``run_batch``), each trial isolated with its own
time and memory limit, and times candidates one at a time (``time_candidates``). Candidate models
always end up in the driver's work folder, whichever backend made them, so the rest of tune does not
know which backend ran.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from onnxshrink.tune.timing import evaluation_feeds, time_candidates
from onnxshrink.tune.trial import Running


class LocalBackend:
    """Each trial a spawned child process; ``jobs`` at a time."""

    name = "local"

    def __init__(self, jobs: int):
        self.jobs = jobs

    def run_batch(
        self, specs: list[dict[str, Any]], timeout_s: float, memory_bytes: int | None
    ) -> list[dict[str, Any]]:
        """Results in the order of ``specs``. Ctrl-C kills the running children and is re-raised."""
        running = [Running(spec, timeout_s, memory_bytes) for spec in specs]
        try:
            while not all(r.poll() for r in running):
                time.sleep(0.05)
        finally:
            for r in running:
                r.kill()
        return [r.result for r in running]

    def time_candidates(
        self, job: Any, candidates: list[tuple[int, Path]], providers: list[str], seconds: float | None
    ) -> dict[int, dict[str, Any]]:
        feeds = evaluation_feeds(job.model, job.data, job.input_shapes, job.seed)
        return time_candidates(job.model, candidates, feeds, providers, threads=job.threads, seconds=seconds)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "jobs": self.jobs}

    def close(self) -> None:
        pass
