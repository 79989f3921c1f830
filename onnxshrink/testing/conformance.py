"""Conformance kit: the checks every onnxshrink method must pass, for plugin authors' own tests.

``check_method(MyMethod)`` runs the method through onnxshrink's real pipeline (the code path of
``onnxshrink MODEL --plugin NAME``) over the reference graphs (shared weights, Constant-node weights,
If/Loop subgraphs, initializers that are graph inputs, float16, dynamic dimensions...) and the models
shipped in ``models/``, and checks:

- ``documented options``: the class is a valid method, every option has a doc, every default is a
  legal value of its option, and the defaults pass ``validate_options``;
- ``runs in the pipeline``: apply, stats and tidy succeed (a ``UsageError`` is a refusal, reported);
- ``valid output``: onnx.checker (strict shape inference when the input passed it) accepts the output
  and onnxruntime loads it;
- ``interface kept``: names, element types and ranks of the graph inputs and outputs are unchanged;
- ``runs in onnxruntime``: the output runs on the CPU EP at two sizes of the dynamic dimensions and
  gives outputs of the original's names, dtypes and shapes;
- ``input not mutated``: the model handed to the kit and the calibration feeds are unchanged;
- ``deterministic``: two runs with the same seed give byte-identical models, and the second run does
  not touch the first run's model;
- ``changes something``: the method changed at least one graph (``require_change``);
- ``changes a hard graph``: the method changed at least one of ``HARD_GRAPHS`` (If/Loop subgraphs,
  Constant-node weights, shared weights, external data), the graphs where real exports break
  optimizers; a method that is right to leave all of them alone says why with
  ``hard_graphs_intended_unchanged="reason"``.

The ``external_data`` graph is saved with its weights in an external-data file and handed to the
method unread, as onnxshrink does with models over ``ONNXSHRINK_LAZY_BYTES``.

A failed check raises :class:`ConformanceError` (an ``AssertionError``) whose one-line message names
the method, the graph and the check. Graphs the method leaves unchanged (nothing it applies to) or
refuses with a ``UsageError`` are not failures; the returned :class:`ConformanceReport` says, per
graph, whether it was changed, or skipped and why (``print(report)``).
"""

from __future__ import annotations

import math
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from onnxshrink.errors import InvalidModelError, OnnxShrinkError, PluginError, UsageError
from onnxshrink.ir.external import external_data_dir, inline_all
from onnxshrink.ir.io import load_model
from onnxshrink.plugin.method import Method, check_method_class
from onnxshrink.plugin.registry import MethodInfo, Registry, load_registry
from onnxshrink.run.pipeline import (
    PreparedStep,
    StepResult,
    check_interface,
    interface_signature,
    passes_full_check,
    run_steps,
)
from onnxshrink.testing.reference_graphs import EXTERNAL_DATA_GRAPHS, HARD_GRAPHS, REFERENCE_GRAPHS
from onnxshrink.toolkit.runtime import cpu_session
from onnxshrink.toolkit.tidy import tidy_model

CHECKOUT = Path(__file__).resolve().parents[2]  # the repository root when onnxshrink runs from a checkout
CALIBRATION_FEEDS = 2  # feeds handed to the method (enough for calibrating methods to run)
CALIBRATION_BATCH = 8  # samples per feed taken from <model>_calib.npz
DYNAMIC_SIZES = (2, 3)  # sizes given to every dynamic dimension: calibration, then a second run check
CHECKS = (
    "documented options",
    "runs in the pipeline",
    "valid output",
    "interface kept",
    "runs in onnxruntime",
    "input not mutated",
    "deterministic",
    "changes something",
    "changes a hard graph",
)


class ConformanceError(AssertionError):
    """A failed conformance check, naming the method, the graph and the check."""

    def __init__(self, method: str, graph: str, check: str, detail: str):
        if check not in CHECKS:
            raise ValueError(f"unknown conformance check {check!r}")
        self.method, self.graph, self.check, self.detail = method, graph, check, " ".join(str(detail).split())
        super().__init__(f"method {method!r} on {graph}: check {check!r} failed: {self.detail}")


@dataclass
class GraphResult:
    """What one graph came to: ``changed``, ``unchanged`` (nothing applied) or ``refused`` (UsageError).

    ``hard`` says why the graph is one of ``HARD_GRAPHS`` (empty for the others)."""

    graph: str
    outcome: str
    reason: str = ""
    stats: dict[str, Any] = field(default_factory=dict)
    hard: str = ""


@dataclass
class ConformanceReport:
    """The graphs a method passed on, and which ones it left alone and why."""

    method: str
    options: dict[str, Any]
    results: list[GraphResult]
    hard_graphs_intended_unchanged: str | None = None

    @property
    def outcomes(self) -> dict[str, str]:
        return {r.graph: r.outcome for r in self.results}

    @property
    def changed(self) -> list[str]:
        return [r.graph for r in self.results if r.outcome == "changed"]

    @property
    def skipped(self) -> dict[str, str]:
        """Graph → reason, for every graph the method left unchanged or refused."""
        return {r.graph: f"{r.outcome}: {r.reason}" for r in self.results if r.outcome != "changed"}

    @property
    def hard_changed(self) -> list[str]:
        """The hard graphs (``HARD_GRAPHS``) the method changed."""
        return [r.graph for r in self.results if r.hard and r.outcome == "changed"]

    def __str__(self) -> str:
        hard = [r for r in self.results if r.hard]
        lines = [
            f"{self.method}: {len(self.changed)} of {len(self.results)} graphs changed ({len(self.hard_changed)} of "
            f"{len(hard)} hard ones), all checks passed"
        ]
        if hard and not self.hard_changed and self.hard_graphs_intended_unchanged:
            lines.append(f"  no hard graph changed, as intended: {self.hard_graphs_intended_unchanged}")
        for r in self.results:
            tag = f" [hard: {r.hard}]" if r.hard else ""
            lines.append(f"  {r.graph}{tag}: {'changed' if r.outcome == 'changed' else f'{r.outcome}: {r.reason}'}")
        return "\n".join(lines)


@dataclass
class _Case:
    label: str
    build: Callable[[], onnx.ModelProto]
    calibration: Callable[[onnx.ModelProto], list[dict[str, np.ndarray]]]
    synthetic: bool
    hard: str = ""
    folder: Path | None = None  # external data lives here; the method runs inside external_data_dir(folder)


def check_method(
    method: type[Method] | str,
    options: Mapping[str, Any] | None = None,
    *,
    graphs: Iterable[str] | Mapping[str, Callable[[], onnx.ModelProto] | onnx.ModelProto] | None = None,
    models: Iterable[str | Path] | str | Path | None = None,
    seed: int = 0,
    require_change: bool = True,
    hard_graphs_intended_unchanged: str | None = None,
    registry: Registry | None = None,
) -> ConformanceReport:
    """Run every conformance check for ``method`` (a Method subclass, or the name of an installed one).

    ``options`` are raw option values as on the command line (``{"bits": "4"}``) or typed ones.
    ``graphs``: reference graph names, or a mapping of label → model (or a builder); default: all of
    ``REFERENCE_GRAPHS``. ``models``: .onnx paths or a folder; default: the models shipped in
    ``models/`` when that folder exists (``<name>_calib.npz`` beside a model is its calibration data).
    ``require_change``: fail when the method changes none of the graphs (a no-op).
    ``hard_graphs_intended_unchanged``: why it is right that the method changes none of the hard graphs
    (``HARD_GRAPHS``) it was given; without it, changing none of them fails the check "changes a hard
    graph". Options that make a method act on them are the better answer (docs/plugin-authors.md).
    """
    info = _method_info(method, registry)
    cls = info.cls
    check_options_documented(cls)
    try:
        values = cls.validate_options(dict(options or {}))
    except UsageError as exc:
        raise ConformanceError(
            cls.name, "(options)", "documented options", f"the options given do not validate: {exc}"
        ) from None
    if hard_graphs_intended_unchanged is not None and not str(hard_graphs_intended_unchanged).strip():
        raise ValueError("hard_graphs_intended_unchanged needs the reason, in words")
    step = PreparedStep(info, values)
    folder = Path(tempfile.mkdtemp(prefix="onnxshrink_kit_"))
    try:
        results = [_check_case(step, case, seed) for case in _cases(graphs, models, seed, folder)]
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    report = ConformanceReport(cls.name, values, results, hard_graphs_intended_unchanged)
    if require_change and results and not report.changed:
        raise ConformanceError(
            cls.name,
            "every graph",
            "changes something",
            f"the method changed none of {len(results)} graphs: {report.skipped}",
        )
    hard = {r.graph: f"{r.outcome}: {r.reason}" for r in results if r.hard}
    if hard and not report.hard_changed and hard_graphs_intended_unchanged is None:
        raise ConformanceError(
            cls.name,
            "the hard graphs",
            "changes a hard graph",
            f"the method changed none of the hard graphs {hard} (with options {values}); pass options that make it act "
            "on them, or hard_graphs_intended_unchanged='why' when leaving them alone is right",
        )
    return report


def run_method(
    method: type[Method] | str,
    model: onnx.ModelProto,
    options: Mapping[str, Any] | None = None,
    *,
    feeds: Sequence[dict[str, np.ndarray]] | None = None,
    seed: int = 0,
    registry: Registry | None = None,
) -> StepResult:
    """Apply one method to ``model`` in place exactly as ``--plugin NAME:options`` does (options
    validated, apply, tidy, onnx.checker, onnxruntime load) and return its result (``.stats``,
    ``.warnings``). ``feeds`` are the calibration data; default: :func:`synthetic_feeds`."""
    info = _method_info(method, registry)
    step = PreparedStep(info, info.cls.validate_options(dict(options or {})))
    calibration = list(feeds) if feeds is not None else synthetic_feeds(model, seed=seed)
    [result] = run_steps(
        model, [step], seed=seed, calibration=lambda: calibration, calibration_is_synthetic=feeds is None
    )
    return result


def check_options_documented(method: type[Method]) -> None:
    """The method class is valid, its options documented, and every default is a legal value."""
    name = getattr(method, "name", None) or getattr(method, "__name__", repr(method))
    problem = check_method_class(method)
    if problem:
        raise ConformanceError(name, "(class)", "documented options", problem)
    where = f"plugin {name!r}"
    for opt in method.options:
        if opt.default is None:
            continue
        try:
            parsed = opt.parse(opt.default, where)
        except UsageError as exc:
            raise ConformanceError(
                name, "(class)", "documented options", f"default of option {opt.name!r} is not a legal value: {exc}"
            ) from None
        if not _same_value(parsed, opt.default):
            raise ConformanceError(
                name,
                "(class)",
                "documented options",
                f"default of option {opt.name!r} is {opt.default!r}, not a {opt.type_name}",
            )
    try:
        method.validate_options({})
    except UsageError as exc:
        raise ConformanceError(
            name, "(class)", "documented options", f"the default options do not validate: {exc}"
        ) from None


def shipped_models(folder: str | Path | None = None) -> list[Path]:
    """The .onnx models in ``folder`` (default: the ``models/`` folder of an onnxshrink checkout; none
    when onnxshrink is installed from a wheel)."""
    if folder is None:
        is_checkout = (CHECKOUT / "pyproject.toml").is_file() and (CHECKOUT / "onnxshrink" / "__init__.py").is_file()
        folder = CHECKOUT / "models" if is_checkout else None
    return sorted(Path(folder).glob("*.onnx")) if folder is not None and Path(folder).is_dir() else []


def synthetic_feeds(
    model: onnx.ModelProto, count: int = CALIBRATION_FEEDS, *, dynamic: int = DYNAMIC_SIZES[0], seed: int = 0
) -> list[dict[str, np.ndarray]]:
    """``count`` random feeds for the model's inputs: floats in [0, 1), integers in {0, 1}, every
    dynamic dimension set to ``dynamic``."""
    rng = np.random.default_rng([seed, dynamic])
    stored = {t.name for t in model.graph.initializer}
    feeds = []
    for _ in range(count):
        feed = {}
        for value in model.graph.input:
            if value.name in stored:
                continue
            tensor = value.type.tensor_type
            shape = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else dynamic for d in tensor.shape.dim]
            dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type)
            if np.issubdtype(dtype, np.floating):
                array = rng.random(shape).astype(dtype)
            elif dtype == np.bool_:
                array = rng.random(shape) < 0.5
            else:
                array = rng.integers(0, 2, shape).astype(dtype)
            feed[value.name] = array
        feeds.append(feed)
    return feeds


# ------------------------------------------------------------------------------------------------
# One graph


def _check_case(step: PreparedStep, case: _Case, seed: int) -> GraphResult:
    if case.folder is None:
        return _check_case_here(step, case, seed)
    with external_data_dir(case.folder):
        return _check_case_here(step, case, seed)


def _inlined(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy with every external tensor read in (for onnx.checker and onnxruntime sessions from bytes)."""
    return inline_all(_clone(model))


def _check_case_here(step: PreparedStep, case: _Case, seed: int) -> GraphResult:
    name, label = step.name, case.label

    def fail(check: str, detail: str) -> ConformanceError:
        return ConformanceError(name, label, check, detail)

    original = case.build()
    original_bytes = _bytes(original)
    feeds = case.calibration(original)
    feeds_copy = _copy_feeds(feeds)

    first = _clone(original)
    try:
        [result] = run_steps(
            first, [step], seed=seed, calibration=lambda: feeds, calibration_is_synthetic=case.synthetic
        )
    except (UsageError, InvalidModelError) as exc:  # exit 2: the method refuses this model, with a reason
        _check_untouched(original, original_bytes, feeds, feeds_copy, fail)
        return GraphResult(label, "refused", exc.message, hard=case.hard)
    except PluginError as exc:
        produced = exc.message.partition(": ")[2]  # the pipeline's own wording for a rejected output
        if produced.startswith("changed the model's interface"):
            check = "interface kept"
        elif produced.startswith(("produced an invalid model", "produced a model onnxruntime cannot load")):
            check = "valid output"
        else:
            check = "runs in the pipeline"
        raise fail(check, exc.message) from None
    _check_untouched(original, original_bytes, feeds, feeds_copy, fail)
    first_bytes = _bytes(first)

    _check_valid(_inlined(first), strict=passes_full_check(_inlined(original)), fail=fail)
    _check_interface(original, first, fail)
    _check_runs(_inlined(original), _inlined(first), case, seed, fail)

    second = _clone(original)
    try:
        run_steps(
            second,
            [step],
            seed=seed,
            calibration=lambda: _copy_feeds(feeds_copy),
            calibration_is_synthetic=case.synthetic,
        )
    except OnnxShrinkError as exc:
        raise fail("deterministic", f"the second run failed where the first succeeded: {exc.message}") from None
    if _bytes(first) != first_bytes:
        raise fail(
            "deterministic", "the second run changed the first run's model (the method keeps state between runs)"
        )
    if _bytes(second) != first_bytes:
        raise fail(
            "deterministic", f"two runs with seed {seed} gave different models{_first_difference(first, second)}"
        )

    tidied = _clone(original)
    tidy_model(tidied)
    if first_bytes == _bytes(tidied):
        reason = "; ".join(result.warnings) or "(the method gave no warning)"
        return GraphResult(label, "unchanged", reason, result.stats, case.hard)
    return GraphResult(label, "changed", "", result.stats, case.hard)


def _check_untouched(original, original_bytes, feeds, feeds_copy, fail) -> None:
    if _bytes(original) != original_bytes:
        raise fail(
            "input not mutated",
            "the model object handed to the kit was modified (the method edited a model it was not given)",
        )
    for index, (feed, kept) in enumerate(zip(feeds, feeds_copy)):
        if set(feed) != set(kept):
            raise fail(
                "input not mutated",
                f"calibration feed {index} had its keys changed from {sorted(kept)} to {sorted(feed)}",
            )
        for key, value in kept.items():
            now = feed[key]
            if not (
                isinstance(now, np.ndarray)
                and now.dtype == value.dtype
                and now.shape == value.shape
                and np.array_equal(now, value, equal_nan=_is_float(value))
            ):
                raise fail(
                    "input not mutated",
                    f"calibration feed {index} input {key!r} was modified in place (the feeds are shared by every "
                    "step of a chain)",
                )


def _check_valid(model: onnx.ModelProto, *, strict: bool, fail) -> None:
    try:
        onnx.checker.check_model(model, full_check=strict)
    except Exception as exc:  # noqa: BLE001
        raise fail("valid output", f"onnx.checker: {_first_line(exc)}") from None
    try:
        cpu_session(model)
    except Exception as exc:  # noqa: BLE001
        raise fail("valid output", f"onnxruntime cannot load it: {_first_line(exc)}") from None


def _check_interface(original: onnx.ModelProto, out: onnx.ModelProto, fail) -> None:
    try:
        check_interface(interface_signature(original), out, "method")
    except PluginError as exc:
        raise fail("interface kept", exc.message.partition(": ")[2]) from None


def _check_runs(original: onnx.ModelProto, out: onnx.ModelProto, case: _Case, seed: int, fail) -> None:
    reference = cpu_session(original)
    try:
        candidate = cpu_session(out)
    except Exception as exc:  # noqa: BLE001
        raise fail("runs in onnxruntime", f"cannot create a session: {_first_line(exc)}") from None
    names = [o.name for o in reference.get_outputs()]
    probes = [
        (f"dynamic dimensions = {size}", synthetic_feeds(original, 1, dynamic=size, seed=seed)[0])
        for size in DYNAMIC_SIZES
    ]
    if not case.synthetic:
        probes.insert(0, ("calibration data", case.calibration(original)[0]))
    for what, feed in probes:
        try:
            expected = reference.run(names, feed)
        except Exception:  # noqa: BLE001 - the original itself does not run at this size: nothing to compare
            continue
        try:
            got = candidate.run(names, feed)
        except Exception as exc:  # noqa: BLE001
            raise fail(
                "runs in onnxruntime", f"the output fails on {what} where the original runs: {_first_line(exc)}"
            ) from None
        for name, e, g in zip(names, expected, got):
            e, g = np.asarray(e), np.asarray(g)
            if e.dtype != g.dtype or e.shape != g.shape:
                raise fail(
                    "runs in onnxruntime",
                    f"output {name!r} on {what} is {g.dtype}{list(g.shape)}, the original gives "
                    f"{e.dtype}{list(e.shape)}",
                )


# ------------------------------------------------------------------------------------------------
# Cases


def _cases(graphs, models, seed: int, folder: Path) -> list[_Case]:
    cases = []
    if graphs is None:
        graphs = REFERENCE_GRAPHS
    elif not isinstance(graphs, Mapping):
        names = list(graphs)
        unknown = sorted(set(names) - set(REFERENCE_GRAPHS))
        if unknown:
            raise ValueError(f"unknown reference graphs {unknown}; known: {sorted(REFERENCE_GRAPHS)}")
        graphs = {n: REFERENCE_GRAPHS[n] for n in names}
    by_name = isinstance(graphs, Mapping) and all(REFERENCE_GRAPHS.get(k) is v for k, v in graphs.items())
    for label, source in graphs.items():
        build = _builder(source)
        reference = by_name or REFERENCE_GRAPHS.get(label) is source
        external = folder / label if reference and label in EXTERNAL_DATA_GRAPHS else None
        if external is not None:
            build = _external_builder(build, external)
        hard = HARD_GRAPHS.get(label, "") if reference else ""
        cases.append(_Case(f"graph {label!r}", build, lambda m: synthetic_feeds(m, seed=seed), True, hard, external))
    if models is None:
        paths = shipped_models()
    elif isinstance(models, (str, Path)):
        paths = shipped_models(models) if Path(models).is_dir() else [Path(models)]
    else:
        paths = [Path(p) for p in models]
    for path in paths:
        cases.append(_model_case(path, seed))
    return cases


def _external_builder(build: Callable[[], onnx.ModelProto], folder: Path) -> Callable[[], onnx.ModelProto]:
    """Save the built model once with every tensor in ``folder/model.data``; each call loads it unread."""

    def load() -> onnx.ModelProto:
        path = folder / "model.onnx"
        if not path.exists():
            folder.mkdir(parents=True, exist_ok=True)
            onnx.save_model(
                build(),
                path,
                save_as_external_data=True,
                all_tensors_to_one_file=True,
                location="model.data",
                size_threshold=0,
            )
        return load_model(path, load_external=False).model

    return load


def _builder(source: Callable[[], onnx.ModelProto] | onnx.ModelProto) -> Callable[[], onnx.ModelProto]:
    if isinstance(source, onnx.ModelProto):
        return lambda: _clone(source)
    return source


def _model_case(path: Path, seed: int) -> _Case:
    calib = path.with_name(f"{path.stem}_calib.npz")

    def build() -> onnx.ModelProto:
        return load_model(path).model

    if not calib.exists():
        return _Case(f"model {path.name!r}", build, lambda m: synthetic_feeds(m, seed=seed), True)

    def calibration(model: onnx.ModelProto) -> list[dict[str, np.ndarray]]:
        with np.load(calib) as data:
            arrays = {i.name: data[i.name] for i in model.graph.input if i.name in data.files}
        first = model.graph.input[0].type.tensor_type.shape.dim
        fixed = first[0].dim_value if first and first[0].HasField("dim_value") else 0
        batch = fixed or CALIBRATION_BATCH
        return [{k: v[i * batch : (i + 1) * batch] for k, v in arrays.items()} for i in range(CALIBRATION_FEEDS)]

    return _Case(f"model {path.name!r}", build, calibration, False)


# ------------------------------------------------------------------------------------------------
# Helpers


def _method_info(method: type[Method] | str, registry: Registry | None) -> MethodInfo:
    if isinstance(method, str):
        return (registry or load_registry()).get(method)
    return MethodInfo(method, plugin=getattr(method, "name", "") or "", distribution="(conformance kit)", version="")


def _clone(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy


def _bytes(model: onnx.ModelProto) -> bytes:
    return model.SerializeToString(deterministic=True)


def _copy_feeds(feeds: Sequence[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    return [{k: np.array(v, copy=True) for k, v in feed.items()} for feed in feeds]


def _is_float(array: np.ndarray) -> bool:
    return np.issubdtype(array.dtype, np.floating)


def _same_value(parsed: Any, default: Any) -> bool:
    if isinstance(default, bool) or isinstance(parsed, bool):
        return type(parsed) is type(default) and parsed == default
    if isinstance(default, (int, float)) and isinstance(parsed, (int, float)):
        return math.isclose(parsed, default)
    if isinstance(default, (list, tuple)):
        return list(parsed) == [str(v) for v in default]
    return parsed == default


def _first_difference(a: onnx.ModelProto, b: onnx.ModelProto) -> str:
    """Where two models differ first, for the message: an initializer, a node, or elsewhere."""
    inits_a = {t.name: t.SerializeToString(deterministic=True) for t in a.graph.initializer}
    inits_b = {t.name: t.SerializeToString(deterministic=True) for t in b.graph.initializer}
    for name in sorted(set(inits_a) | set(inits_b)):
        if inits_a.get(name) != inits_b.get(name):
            return f" (first difference: initializer {name!r})"
    for na, nb in zip(a.graph.node, b.graph.node):
        if na.SerializeToString(deterministic=True) != nb.SerializeToString(deterministic=True):
            return f" (first difference: node {na.name or na.op_type!r})"
    return ""


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
