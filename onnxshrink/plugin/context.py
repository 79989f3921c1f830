"""What a method gets besides the model: calibration data, a seeded RNG, an ORT runner, progress, log."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

import numpy as np
import onnx

from onnxshrink.toolkit import runtime
from onnxshrink.toolkit.segments import SegmentRunner


class ProgressTask(Protocol):
    def advance(self, amount: float = 1) -> None: ...


class _NullTask:
    def advance(self, amount: float = 1) -> None:
        pass


# (description, total, unit): unit "" counts items, "B" counts bytes and shows the throughput
ProgressFactory = Callable[[str, "float | None", str], contextlib.AbstractContextManager[ProgressTask]]


@contextlib.contextmanager
def no_progress(description: str, total: float | None, unit: str = "") -> Iterator[ProgressTask]:
    """A ProgressFactory that shows nothing (the default when the caller gives none)."""
    yield _NullTask()


_no_progress = no_progress


class Context:
    """Per-step services for a method.

    - ``seed`` and ``rng``: a numpy Generator seeded from the run's seed and the step's position, so the
      same seed gives the same model.
    - ``calibration_feeds()``: the calibration samples (a list of ``{input name: array}``) from the
      user's ``--data``, or synthetic inputs when none was given (``calibration_is_synthetic``).
    - ``run(model, feeds)`` and ``activations(model, names, feeds)``: onnxruntime on the CPU.
    - ``segments(model, feeds)``: a :class:`~onnxshrink.SegmentRunner` that runs the model forward
      piece by piece (layer inputs one after the other, without running the whole model each time).
    - ``progress(description, total, unit="")``: a context manager whose task has ``advance(n)``;
      with ``unit="B"`` it counts bytes and shows the throughput (MB/s).
    - ``log(message)`` and ``warn(message)``: messages shown to the user (warnings also in the report).
    """

    def __init__(
        self,
        *,
        plugin: str = "",
        seed: int = 0,
        step: int = 0,
        calibration: Callable[[], Sequence[dict[str, np.ndarray]]] | None = None,
        calibration_is_synthetic: bool = True,
        progress: ProgressFactory | None = None,
        log: Callable[[str], None] | None = None,
    ):
        self.plugin = plugin
        self.seed = seed
        self.rng = np.random.default_rng([seed, step])
        self._calibration = calibration
        self._calibration_cache: list[dict[str, np.ndarray]] | None = None
        self.calibration_is_synthetic = calibration_is_synthetic
        self._progress = progress or _no_progress
        self._log = log or (lambda message: None)
        self.warnings: list[str] = []

    def calibration_feeds(self) -> list[dict[str, np.ndarray]]:
        """Calibration samples; an empty list when the run has no data source."""
        if self._calibration_cache is None:
            self._calibration_cache = list(self._calibration()) if self._calibration else []
        return self._calibration_cache

    def run(
        self, model: onnx.ModelProto, feeds: Sequence[dict[str, np.ndarray]], output_names: Sequence[str] | None = None
    ) -> list[dict[str, np.ndarray]]:
        """Run ``model`` on the CPU EP over ``feeds``; one dict of outputs per feed."""
        return runtime.run_model(model, feeds, output_names)

    def activations(
        self, model: onnx.ModelProto, names: Sequence[str], feeds: Sequence[dict[str, np.ndarray]]
    ) -> dict[str, list[np.ndarray]]:
        """Values of intermediate tensors ``names`` on each feed (the model is not modified)."""
        return runtime.intermediate_values(model, names, feeds)

    def segments(self, model: onnx.ModelProto, feeds: Sequence[dict[str, np.ndarray]]) -> SegmentRunner:
        """A runner that takes ``model`` forward piece by piece over ``feeds``
        (see :class:`~onnxshrink.SegmentRunner`)."""
        return SegmentRunner(model, feeds)

    def progress(
        self, description: str, total: float | None = None, unit: str = ""
    ) -> contextlib.AbstractContextManager[ProgressTask]:
        if unit not in ("", "B"):
            raise ValueError(f"progress unit must be '' (items) or 'B' (bytes), not {unit!r}")
        return self._progress(f"{self.plugin}: {description}" if self.plugin else description, total, unit)

    def log(self, message: str) -> None:
        self._log(f"{self.plugin}: {message}" if self.plugin else message)

    def warn(self, message: str) -> None:
        self.warnings.append(message)
        self.log(f"warning: {message}")
