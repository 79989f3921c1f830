"""Input data for a model: load ``.npz``/``.npy`` files or synthesize inputs, check them, batch them.

Sources (``load_feeds``):

- a ``.npz`` file: keys are graph input names, plus an optional ``labels`` array;
- a folder of ``.npz`` files (each one complete set of keys, read in sorted file-name order, their feeds
  concatenated), or a folder of ``.npy`` files named ``<input>.npy`` (plus optional ``labels.npy``)
  that together form one set of keys. A folder holding both kinds is an error;
- ``None``: synthetic inputs from the declared shapes and dtypes, deterministic from ``seed``: floats
  standard normal, integers uniform in ``[0, 4)`` or, when they index a table, in ``[0, rows)``, masks
  and bools all ones. Dynamic dims come from ``input_shapes``, else from the graph, else from a search
  that runs the model in onnxruntime until it accepts a size (see :mod:`onnxshrink.validate.synthetic`).
  ``DataSet.synthetic`` is then True and ``DataSet.warnings`` says so and lists what was chosen.

Layout of one array (checked per input against the graph input's declared rank):

- rank equal to the input's rank: ONE batch. When every input's first dim is dynamic and all arrays
  share the same first-dim length, the batch is split along axis 0 into feeds of ``batch_size``
  samples; otherwise it is kept whole as one feed;
- rank one more than the input's rank: a STACK, one complete feed per entry of the leading axis (how
  fixed-batch models and stateful models keep data). All inputs of a set must then be stacks of the
  same length.

A feed's sample count is the first-dim length of its first input (1 for a scalar input). ``labels``
holds one entry per sample across all feeds in order (any shape whose size is the total sample count,
or ``(samples, classes)`` one-hot/probabilities).

Checks (each a one-line ``UsageError`` naming the file and input): every required graph input present
(initializers that are also graph inputs are optional), no extra keys besides ``labels``, dtype equal
to the declared element type, static dims equal to the declared ones. Dtype is strict with one
exception: float64 data for a float32 input is cast to float32 (numpy's default dtype is float64, so
this is the common slip) and a warning is recorded.

Calibration/evaluation split (``split_calibration``): with ``n`` feeds, the first
``k = clamp(floor(n * fraction), 1, n - 1)`` feeds are for calibration and the remaining ``n - k`` for
evaluation (fidelity), so the two never overlap. With a single feed both parts are that same feed and
a warning says that fidelity is then measured on the calibration data.
"""

from __future__ import annotations

import math
import os
import re
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx

from onnxshrink.errors import UsageError, one_line
from onnxshrink.ir.external import external_tensors
from onnxshrink.toolkit.runtime import cpu_session
from onnxshrink.validate import synthetic

LABELS_KEY = "labels"
DEFAULT_BATCH_SIZE = 32
DEFAULT_SYNTHETIC_FEEDS = 8
SYNTHETIC_WARNING = (
    "no --data given: using synthetic random inputs; fidelity measured on random inputs says little "
    "about accuracy on real data"
)

Feed = dict[str, np.ndarray]


@dataclass
class InputSpec:
    """A required graph input: name, numpy dtype, ONNX type name and shape (None = dynamic dim)."""

    name: str
    dtype: np.dtype
    type_name: str
    shape: tuple[int | None, ...] | None  # None: rank unknown


@dataclass
class DataSet:
    """Feeds ready to run, with labels aligned to samples."""

    feeds: list[Feed]
    labels: np.ndarray | None = None
    source: str | None = None
    synthetic: bool = False
    warnings: list[str] = field(default_factory=list)
    samples_per_feed: list[int] = field(default_factory=list)
    role: str = "all"  # "all", "calibration" or "evaluation"

    @property
    def samples(self) -> int:
        return int(sum(self.samples_per_feed))

    def summary(self) -> dict:
        """The ``data`` section of a validation report."""
        return {
            "source": self.source,
            "samples": self.samples,
            "feeds": len(self.feeds),
            "synthetic": self.synthetic,
            "role": self.role,
            "warnings": list(self.warnings),
        }


# ---------------------------------------------------------------------------------------------- specs


def input_specs(model: onnx.ModelProto) -> list[InputSpec]:
    """Required inputs of the main graph (graph inputs that are not also initializers)."""
    init_names = {t.name for t in model.graph.initializer} | {s.values.name for s in model.graph.sparse_initializer}
    specs = []
    for vi in model.graph.input:
        if vi.name in init_names:
            continue
        tt = vi.type.tensor_type
        if not vi.type.HasField("tensor_type"):
            raise UsageError(f"graph input {vi.name!r} is not a tensor; onnxshrink can only feed tensor inputs")
        elem = tt.elem_type
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem))
        type_name = onnx.TensorProto.DataType.Name(elem).lower()
        shape = None
        if tt.HasField("shape"):
            shape = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tt.shape.dim)
        specs.append(InputSpec(vi.name, dtype, type_name, shape))
    return specs


def _fmt_shape(shape) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


# ----------------------------------------------------------------------------------------- parsing


_SHAPE_RE = re.compile(r"^\s*(?P<name>[^=]+?)\s*=\s*(?P<dims>[0-9]+(?:\s*[xX,]\s*[0-9]+)*)\s*$")


def parse_input_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """``"name=1x3x224x224"`` → ``("name", (1, 3, 224, 224))``; ``"name="`` gives a scalar shape ``()``."""
    if "=" not in text:
        raise UsageError(f"bad input shape {text!r}: expected NAME=DIMS, for example input=1x3x224x224")
    name, _, dims = text.partition("=")
    name = name.strip()
    if not name:
        raise UsageError(f"bad input shape {text!r}: the input name before '=' is empty")
    if not dims.strip():
        return name, ()
    m = _SHAPE_RE.match(text)
    if not m:
        raise UsageError(
            f"bad input shape {text!r}: dims must be positive integers separated by 'x', for example {name}=1x3x224x224"
        )
    values = tuple(int(v) for v in re.split(r"\s*[xX,]\s*", m.group("dims").strip()))
    if any(v <= 0 for v in values):
        raise UsageError(f"bad input shape {text!r}: every dim must be a positive integer")
    return name, values


# ------------------------------------------------------------------------------------------ loading


def load_feeds(
    source: str | os.PathLike | None,
    model: onnx.ModelProto,
    *,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    max_samples: int | None = None,
    seed: int = 0,
    batch_size: int = DEFAULT_BATCH_SIZE,
    synthetic_feeds: int = DEFAULT_SYNTHETIC_FEEDS,
    probe: bool = True,
) -> DataSet:
    """Load (or synthesize) and check the inputs for ``model``; see the module docstring for the rules."""
    if batch_size < 1:
        raise UsageError(f"batch size must be a positive integer, got {batch_size}")
    if max_samples is not None and max_samples < 1:
        raise UsageError(f"max samples must be a positive integer, got {max_samples}")
    specs = input_specs(model)
    if source is None:
        return _synthetic(model, specs, input_shapes or {}, max_samples, seed, synthetic_feeds, probe)

    path = Path(source)
    if not path.exists():
        raise UsageError(f"data file {str(path)!r} does not exist")
    warnings: list[str] = []
    if input_shapes:
        warnings.append(
            f"input shapes for {sorted(input_shapes)} ignored: the shapes come from the data in {str(path)!r}"
        )
    parts: list[tuple[list[Feed], list[int], np.ndarray | None, str]] = []
    if path.is_dir():
        npz = sorted(p for p in path.iterdir() if p.is_file() and p.suffix == ".npz")
        npy = sorted(p for p in path.iterdir() if p.is_file() and p.suffix == ".npy")
        if npz and npy:
            raise UsageError(
                f"data folder {str(path)!r} holds both .npz and .npy files; use one kind "
                "(.npz files: one set of inputs each; .npy files: one file per input named <input>.npy)"
            )
        if not npz and not npy:
            raise UsageError(f"data folder {str(path)!r} holds no .npz or .npy files")
        if npz:
            for p in npz:
                arrays = _read_npz(p)
                parts.append((*_normalize(arrays, specs, str(p), batch_size, warnings), str(p)))
        else:
            arrays = {p.stem: _read_npy(p) for p in npy}
            parts.append((*_normalize(arrays, specs, str(path), batch_size, warnings), str(path)))
    elif path.suffix == ".npz":
        parts.append((*_normalize(_read_npz(path), specs, str(path), batch_size, warnings), str(path)))
    else:
        raise UsageError(f"data {str(path)!r} must be a .npz file or a folder of .npz/.npy files")

    with_labels = [p[3] for p in parts if p[2] is not None]
    if with_labels and len(with_labels) != len(parts):
        missing = [p[3] for p in parts if p[2] is None]
        raise UsageError(
            f"data files {missing[:3]} have no 'labels' array while {with_labels[:1]} has one; give labels in all or "
            "none"
        )
    feeds: list[Feed] = []
    counts: list[int] = []
    labels_parts: list[np.ndarray] = []
    for f, c, lab, _ in parts:
        feeds += f
        counts += c
        if lab is not None:
            labels_parts.append(lab)
    labels = np.concatenate(labels_parts, axis=0) if labels_parts else None
    ds = DataSet(feeds, labels, str(path), False, warnings, counts)
    return _truncate(ds, max_samples)


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise UsageError(f"cannot read data file {str(path)!r}: {e}") from None


def _read_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise UsageError(f"cannot read data file {str(path)!r}: {e}") from None


def _check_keys(arrays: dict[str, np.ndarray], specs: list[InputSpec], where: str) -> None:
    names = [s.name for s in specs]
    found = sorted(arrays)
    missing = [n for n in names if n not in arrays]
    if missing:
        raise UsageError(
            f"data {where!r} has no array for graph input(s) {missing}; keys found: {found}; inputs required: {names}"
        )
    extra = [k for k in found if k not in names and k != LABELS_KEY]
    if extra:
        raise UsageError(
            f"data {where!r} has key(s) {extra} that are not graph inputs; inputs required: {names} (plus optional "
            "'labels')"
        )


def _check_dtype(arr: np.ndarray, spec: InputSpec, where: str, warnings: list[str]) -> np.ndarray:
    if arr.dtype == spec.dtype:
        return arr
    if spec.dtype == np.float32 and arr.dtype == np.float64:
        note = f"input {spec.name!r} given as float64, cast to float32 as the model declares"
        if note not in warnings:
            warnings.append(note)
        return arr.astype(np.float32)
    raise UsageError(
        f"data {where!r}: input {spec.name!r} has dtype {arr.dtype}, the model expects {spec.type_name} ({spec.dtype})"
    )


def _normalize(
    arrays: dict[str, np.ndarray], specs: list[InputSpec], where: str, batch_size: int, warnings: list[str]
) -> tuple[list[Feed], list[int], np.ndarray | None]:
    """One set of keys → (feeds, samples per feed, labels or None)."""
    _check_keys(arrays, specs, where)
    checked: dict[str, np.ndarray] = {}
    stacked: dict[str, bool] = {}
    for spec in specs:
        arr = _check_dtype(np.asarray(arrays[spec.name]), spec, where, warnings)
        if spec.shape is None:
            stacked[spec.name] = False  # rank unknown: take it as one batch
        elif arr.ndim == len(spec.shape):
            stacked[spec.name] = False
        elif arr.ndim == len(spec.shape) + 1:
            stacked[spec.name] = True
        else:
            raise UsageError(
                f"data {where!r}: input {spec.name!r} has shape {list(arr.shape)} (rank {arr.ndim}); the model expects "
                f"rank {len(spec.shape)} {_fmt_shape(spec.shape)} for one batch or rank {len(spec.shape) + 1} for a "
                "stack of feeds"
            )
        if spec.shape is not None:
            per_feed = arr.shape[1:] if stacked[spec.name] else arr.shape
            for i, (want, got) in enumerate(zip(spec.shape, per_feed)):
                if want is not None and want != got:
                    kind = "each stacked feed of " if stacked[spec.name] else ""
                    raise UsageError(
                        f"data {where!r}: {kind}input {spec.name!r} dim {i} is {got}, the model declares {want} "
                        f"(expected shape {_fmt_shape(spec.shape)}, got {list(per_feed)})"
                    )
        checked[spec.name] = arr

    kinds = set(stacked.values())
    if len(kinds) > 1:
        st = [n for n, s in stacked.items() if s]
        one = [n for n, s in stacked.items() if not s]
        raise UsageError(
            f"data {where!r}: inputs {st} are stacks of feeds (one extra leading axis) but {one} are single batches; "
            "use one layout for all inputs"
        )
    if kinds == {True}:
        lengths = {n: a.shape[0] for n, a in checked.items()}
        if len(set(lengths.values())) > 1:
            raise UsageError(f"data {where!r}: stacked inputs have different numbers of feeds {lengths}")
        n = next(iter(lengths.values()), 1)
        feeds = [{k: np.ascontiguousarray(a[i]) for k, a in checked.items()} for i in range(n)]
    else:
        feeds = _split_batch(checked, specs, batch_size)
    counts = [_samples_in(feed, specs) for feed in feeds]
    labels = None
    if LABELS_KEY in arrays and LABELS_KEY not in {s.name for s in specs}:
        labels = _align_labels(np.asarray(arrays[LABELS_KEY]), sum(counts), where)
    return feeds, counts, labels


def _split_batch(arrays: dict[str, np.ndarray], specs: list[InputSpec], batch_size: int) -> list[Feed]:
    if not specs:
        return [{}]
    lengths = set()
    for spec in specs:
        arr = arrays[spec.name]
        if arr.ndim == 0 or spec.shape is None or not spec.shape or spec.shape[0] is not None:
            return [arrays]
        lengths.add(arr.shape[0])
    if len(lengths) != 1:
        return [arrays]
    n = lengths.pop()
    if n <= batch_size:
        return [arrays]
    return [
        {k: np.ascontiguousarray(a[i : i + batch_size]) for k, a in arrays.items()} for i in range(0, n, batch_size)
    ]


def _samples_in(feed: Feed, specs: list[InputSpec]) -> int:
    for spec in specs:
        arr = feed[spec.name]
        return int(arr.shape[0]) if arr.ndim else 1
    return 1


def _align_labels(labels: np.ndarray, samples: int, where: str) -> np.ndarray:
    if labels.size == samples:
        return labels.reshape(-1)
    if labels.ndim == 2 and labels.shape[0] == samples:
        return labels  # one-hot or per-class scores; fidelity takes the argmax
    raise UsageError(
        f"data {where!r}: 'labels' has shape {list(labels.shape)} but the inputs hold {samples} samples; "
        "give one label per sample"
    )


def _truncate(ds: DataSet, max_samples: int | None) -> DataSet:
    """Keep whole feeds (at least one) while the running sample count stays within ``max_samples``."""
    if max_samples is None or ds.samples <= max_samples:
        return ds
    keep, total = 0, 0
    for c in ds.samples_per_feed:
        if keep and total + c > max_samples:
            break
        keep += 1
        total += c
    labels = ds.labels[:total] if ds.labels is not None else None
    return replace(ds, feeds=ds.feeds[:keep], samples_per_feed=ds.samples_per_feed[:keep], labels=labels)


# ---------------------------------------------------------------------------------------- synthetic


def _synthetic(
    model: onnx.ModelProto,
    specs: list[InputSpec],
    input_shapes: dict[str, tuple[int, ...]],
    max_samples: int | None,
    seed: int,
    n_feeds: int,
    probe: bool,
) -> DataSet:
    names = {s.name for s in specs}
    unknown = sorted(set(input_shapes) - names)
    if unknown:
        raise UsageError(f"input shape given for {unknown}, which is not a graph input; inputs: {sorted(names)}")
    for spec in specs:
        given = input_shapes.get(spec.name)
        if spec.shape is None:
            if given is None:
                raise UsageError(
                    f"graph input {spec.name!r} has no declared shape; give one with --input-shape {spec.name}=DIMS"
                )
            continue
        if given is None:
            continue
        if len(given) != len(spec.shape):
            raise UsageError(
                f"input shape for {spec.name!r} has rank {len(given)}, the model declares rank {len(spec.shape)} "
                f"{_fmt_shape(spec.shape)}"
            )
        for i, (want, got) in enumerate(zip(spec.shape, given)):
            if want is not None and want != got:
                raise UsageError(
                    f"input shape for {spec.name!r}: dim {i} is {got}, the model declares {want} (expected "
                    f"{_fmt_shape(spec.shape)})"
                )

    runner, warnings = None, [SYNTHETIC_WARNING]
    if probe:
        runner, why_not = _probe_runner(model)
        if why_not:
            warnings.append(f"synthetic input shapes not checked: {why_not}")
    plan = synthetic.plan_shapes(model, specs, {k: tuple(v) for k, v in input_shapes.items()}, runner, seed)
    shapes = plan.shapes
    warnings += plan.notes
    for spec in specs:
        hints = plan.hints[spec.name]
        if hints.mask:
            warnings.append(f"input {spec.name!r}: all ones (a mask)")
        elif np.issubdtype(spec.dtype, np.integer):
            where = f"indices of Gather {hints.index_node!r}" if hints.index_bound else "no table found to bound it"
            warnings.append(
                f"input {spec.name!r}: integers in [0, {hints.index_bound or synthetic.DEFAULT_INT_HIGH}) ({where})"
            )

    rng = np.random.default_rng(seed)
    per_feed = _samples_from_shapes(specs, shapes)
    if max_samples is not None:
        n_feeds = max(1, min(n_feeds, math.floor(max_samples / per_feed)))
    feeds = []
    for _ in range(n_feeds):
        feeds.append({s.name: synthetic.random_input(rng, s, shapes[s.name], plan.hints[s.name]) for s in specs})
    return DataSet(feeds, None, None, True, warnings, [per_feed] * n_feeds)


def check_runs(model: onnx.ModelProto, dataset: DataSet) -> None:
    """Run ``model`` on the first feed of user data, so data that does not fit fails before any method
    runs (exit 2, the input named); skipped for large models still on disk and models onnxruntime
    cannot load (the pipeline says why)."""
    if dataset.synthetic or not dataset.feeds:
        return
    runner, why_not = _probe_runner(model)
    if runner is None:
        return
    try:
        runner(dataset.feeds[0])
    except Exception as exc:  # noqa: BLE001
        shapes = ", ".join(f"{k} {list(v.shape)} {v.dtype}" for k, v in dataset.feeds[0].items())
        raise UsageError(
            f"the model does not run on the data {dataset.source!r} (first feed: {shapes}): {one_line(exc, 400)}"
        ) from None


def _probe_runner(model: onnx.ModelProto):
    """(run one feed, None) or (None, why the model cannot be tried here)."""
    if external_tensors(model):
        return None, "the model's weights are still on disk (a large model); the first validation run checks them"
    try:
        session = cpu_session(model)
    except Exception as exc:  # noqa: BLE001 - the pipeline reports why onnxruntime cannot load it
        return None, f"onnxruntime cannot load the model ({one_line(exc, 200)})"
    return (lambda feed: session.run(None, feed)), None


def _samples_from_shapes(specs: list[InputSpec], shapes: dict[str, tuple[int, ...]]) -> int:
    for spec in specs:
        shape = shapes[spec.name]
        return int(shape[0]) if shape else 1
    return 1


# ------------------------------------------------------------------------------------------- split


def split_calibration(dataset: DataSet, fraction: float = 0.5) -> tuple[DataSet, DataSet]:
    """(calibration, evaluation) by the rule in the module docstring."""
    if not 0.0 < fraction < 1.0:
        raise UsageError(f"calibration fraction must be between 0 and 1 (exclusive), got {fraction}")
    n = len(dataset.feeds)
    if n <= 1:
        note = "only one feed: calibration and evaluation use the same data, so fidelity may look better than it is"
        warnings = [*dataset.warnings, note]
        return (
            replace(dataset, role="calibration", warnings=warnings),
            replace(dataset, role="evaluation", warnings=warnings),
        )
    k = min(max(math.floor(n * fraction), 1), n - 1)
    split_at = sum(dataset.samples_per_feed[:k])

    def part(lo: int, hi: int | None, s_lo: int, s_hi: int | None, role: str) -> DataSet:
        labels = dataset.labels[s_lo:s_hi] if dataset.labels is not None else None
        return replace(
            dataset,
            feeds=dataset.feeds[lo:hi],
            samples_per_feed=dataset.samples_per_feed[lo:hi],
            labels=labels,
            role=role,
            warnings=list(dataset.warnings),
        )

    return part(0, k, 0, split_at, "calibration"), part(k, None, split_at, None, "evaluation")
