"""Build one quantized representation of a model: storage, weights, dynamic or static."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace

import onnx
from onnx import TensorProto

import onnxshrink

from . import static as static_qdq
from .dynamic import dynamic_reason, write_dynamic
from .forms import Scheme, dequantize_linear_reason, float16_reason, write_dequantize_linear, write_storage
from .matmulnbits import matmulnbits_reason, write_matmulnbits
from .measure import session_graph
from .shape_only import shape_only_constants
from .targets import WEIGHTED_OPS, Plan, node_label, plan_targets

MODES = ("storage", "weights", "dynamic", "static")
Progress = Callable[[int], contextlib.AbstractContextManager]  # total bytes -> a task with advance(n)


@contextlib.contextmanager
def _no_progress(total: int) -> Iterator:
    class _Task:
        def advance(self, amount: float = 1) -> None:
            pass

    yield _Task()


@dataclass(frozen=True)
class Settings:
    """Everything a build needs, resolved from the method's options."""

    mode: str
    scheme: Scheme
    exclude: tuple[str, ...] = ()
    op_types: tuple[str, ...] = WEIGHTED_OPS
    embeddings: bool = False
    min_size: int = 0
    opset_upgrade: bool = True
    dq_conv: bool = False
    weights_format: str = "matmulnbits"  # or "dequantize_linear"
    accuracy_level: int = 0
    static: static_qdq.StaticSettings = field(default_factory=static_qdq.StaticSettings)


@dataclass
class Built:
    model: onnx.ModelProto
    quantized: list[dict]
    left: list[dict]
    notes: list[str]
    opset: dict
    shape_only: list[dict] = field(default_factory=list)


def build(
    model: onnx.ModelProto,
    settings: Settings,
    keep_float: Iterable[str] = (),
    calibrated: static_qdq.Calibrated | None = None,
    *,
    in_place: bool = False,
    progress: Progress | None = None,
    wider: Scheme | None = None,
    tiers: Sequence[tuple[Sequence[str], Scheme]] = (),
) -> Built:
    """A quantized copy of ``model`` (``model`` itself is not modified). ``keep_float``: node labels left float.

    ``in_place=True`` edits ``model`` itself where it can (``Built.model`` may still be a new model,
    after an opset upgrade): no copy of a large model's new tensors. ``progress(total_bytes)`` opens a
    progress task advanced by each weight's bytes as it is written (storage, weights, dynamic).
    ``wider``: the ``keep_float`` layers are stored in the storage form at this scheme instead of float
    (mixed precision: int8 where int4 costs too much fidelity). ``tiers``: several such groups, each
    (layer labels, scheme), e.g. the most sensitive layers at float16 and the next ones at int8.
    """
    work = model
    if not in_place:
        work = onnx.ModelProto()
        work.CopyFrom(model)
    keep_float = tuple(keep_float)
    before = onnxshrink.model_opset(work)
    if settings.mode == "static":
        built = _build_static(work, settings, keep_float, calibrated)
    elif tiers:
        built = _build_tiers(work, settings, tiers)
    elif wider is not None and keep_float:
        built = _build_tiers(work, settings, [(keep_float, wider)])
    else:
        built = _build_weight_forms(work, settings, keep_float, progress=progress)
    built.shape_only = shape_only_constants(built.model, settings.min_size)
    onnxshrink.tidy_model(built.model)
    built.opset = {"before": before, "after": onnxshrink.model_opset(built.model)}
    return built


def _plan(model: onnx.ModelProto, settings: Settings, keep_float: tuple[str, ...]) -> Plan:
    return plan_targets(
        model,
        op_types=settings.op_types,
        embeddings=settings.embeddings,
        exclude=settings.exclude,
        keep_float=keep_float,
        min_size=settings.min_size,
    )


def _dq_opset(scheme: Scheme) -> int:
    if scheme.bits <= 2:
        return 25
    if scheme.bits <= 4 or scheme.block_size:
        return 21
    return 13 if scheme.per_channel else 10


def _ensure_opset(
    model: onnx.ModelProto, needed: int, settings: Settings, why: str, notes: list[str]
) -> tuple[onnx.ModelProto, bool]:
    """``model`` at opset ``needed`` or higher (upgraded when allowed), and whether that worked."""
    current = onnxshrink.model_opset(model)
    if current >= needed:
        return model, True
    if not settings.opset_upgrade:
        notes.append(f"{why} needs opset {needed}; the model has {current} and opset_upgrade=false")
        return model, False
    try:
        upgraded = onnxshrink.upgrade_opset(model, needed)
    except ValueError as exc:
        notes.append(f"{why} needs opset {needed}: {exc}")
        return model, False
    notes.append(f"opset upgraded from {current} to {needed} for {why}")
    return upgraded, True


def _build_weight_forms(
    work: onnx.ModelProto,
    settings: Settings,
    keep_float: tuple[str, ...],
    unfused: frozenset[str] = frozenset(),
    progress: Progress | None = None,
) -> Built:
    """Storage, weights or dynamic: each target in the mode's own form where that runs well, else storage.

    With ``weights_format=dequantize_linear``, a DequantizeLinear that onnxruntime does not fuse after
    all (it fuses Gemm/MatMul+Add with a following Relu into FusedGemm first) is rebuilt in the storage
    form, so the mode is never slower than storage.
    """
    original = onnx.ModelProto()
    if _dq_format(settings) and not unfused:
        original.CopyFrom(work)  # pristine, for the rebuild
    notes: list[str] = []
    scheme = settings.scheme
    storage_opset = 10 if scheme.bits < 8 or scheme.block_size else 6
    work, storage_ok = _ensure_opset(work, storage_opset, settings, f"{scheme.bits}-bit storage", notes)
    dq_scheme: Scheme | None = scheme
    special_ok = True
    plan = _plan(work, settings, keep_float)
    if settings.mode == "weights":
        wanted = [t for t in plan.targets if _weights_form(t, settings, scheme, unfused)[0] == "dequantize_linear"]
        if wanted:
            upgraded, ok = _ensure_opset(
                work, _dq_opset(scheme), settings, f"{scheme.bits}-bit DequantizeLinear ({_granularity(scheme)})", notes
            )
            if ok and upgraded is not work:
                work = upgraded
                plan = _plan(work, settings, keep_float)
            elif not ok and scheme.bits == 8 and not scheme.block_size and onnxshrink.model_opset(work) >= 10:
                dq_scheme = replace(scheme, per_channel=False)
                notes.append("DequantizeLinear weights fall back to per-tensor scales")
            elif not ok:
                dq_scheme = None
    elif settings.mode == "dynamic":
        work, special_ok = _ensure_opset(
            work, 10, settings, "dynamic int8 (DynamicQuantizeLinear, MatMulInteger)", notes
        )
        plan = _plan(work, settings, keep_float)
    taken = onnxshrink.all_names(work)
    quantized, left = [], list(plan.left)
    sizes = [t.weight.nbytes for t in plan.targets]  # before writing: a written weight is replaced
    with (progress or _no_progress)(sum(sizes)) as task:
        for target, size in zip(plan.targets, sizes):
            if scheme.bits == 16 and float16_reason(target):
                left.append(
                    {
                        "tensor": target.weight.name,
                        "layers": target.layers,
                        "shape": list(target.weight.shape),
                        "reason": f"kept float: {float16_reason(target)}",
                    }
                )
                task.advance(size)
                continue
            form, reason = _form(target, settings, dq_scheme, special_ok, unfused)
            if form == "matmulnbits":
                quantized.append(write_matmulnbits(work, target, scheme, taken, settings.accuracy_level))
            elif form == "dequantize_linear":
                quantized.append(write_dequantize_linear(work, target, dq_scheme, taken))
            elif form == "dynamic":
                quantized.append(write_dynamic(work, target, scheme, taken, reduce_range=settings.static.reduce_range))
            elif storage_ok:
                quantized.append(
                    write_storage(
                        work, target, scheme, taken, note=f"stored with the folded chain: {reason}" if reason else ""
                    )
                )
            else:
                why = (
                    f"{scheme.bits}-bit storage needs opset {storage_opset} "
                    f"(the model has {onnxshrink.model_opset(work)})"
                )
                left.append(
                    {
                        "tensor": target.weight.name,
                        "layers": target.layers,
                        "shape": list(target.weight.shape),
                        "reason": why,
                    }
                )
            task.advance(size)
    if _dq_format(settings) and not unfused:
        missed = _unfused_dequantize(work, quantized)
        if missed:
            return _build_weight_forms(original, settings, keep_float, frozenset(missed), progress)
    return Built(work, quantized, left, notes, {})


def _build_tiers(work: onnx.ModelProto, settings: Settings, tiers: Sequence[tuple[Sequence[str], Scheme]]) -> Built:
    """Each tier's layers stored at its scheme (storage form), then every other layer as ``settings`` say."""
    layers = set(_plan(work, settings, ()).layers)
    quantized: list[dict] = []
    left: list[dict] = []
    notes: list[str] = []
    for labels, scheme in tiers:
        if not labels:
            continue
        others = tuple(sorted(layers - set(labels)))
        tier = _build_weight_forms(work, replace(settings, mode="storage", scheme=scheme), others)
        for item in tier.quantized:
            item["kept_wider"] = True
        work = tier.model
        quantized += tier.quantized
        left += [item for item in tier.left if item.get("reason") != "kept float by the sensitivity search"]
        notes += tier.notes
    rest = _build_weight_forms(work, settings, ())
    return Built(rest.model, quantized + rest.quantized, left + rest.left, notes + rest.notes, {})


def _dq_format(settings: Settings) -> bool:
    return settings.mode == "weights" and settings.weights_format == "dequantize_linear"


def _granularity(scheme: Scheme) -> str:
    return "block-wise" if scheme.block_size else "per-channel" if scheme.per_channel else "per-tensor"


def _weights_form(target, settings: Settings, scheme: Scheme | None, unfused: frozenset[str]) -> tuple[str, str]:
    """weights mode: (form, why storage) for one target, ``scheme`` being what DequantizeLinear would use."""
    if target.uses[0].node.op_type == "Conv" and settings.dq_conv:
        if scheme is None:
            return "storage", "DequantizeLinear at these bits needs a newer opset"
        reason = dequantize_linear_reason(target, scheme, True)
        return ("storage", reason) if reason else ("dequantize_linear", "")
    if settings.weights_format == "matmulnbits":
        reason = matmulnbits_reason(target, settings.scheme)
        return ("storage", reason) if reason else ("matmulnbits", "")
    if scheme is None:
        return "storage", "DequantizeLinear at these bits needs a newer opset"
    if target.weight.name in unfused:
        return (
            "storage",
            "onnxruntime did not fuse its DequantizeLinear (it fused the Gemm with the next activation first)",
        )
    reason = dequantize_linear_reason(target, scheme, settings.dq_conv)
    return ("storage", reason) if reason else ("dequantize_linear", "")


def _form(
    target, settings: Settings, dq_scheme: Scheme | None, special_ok: bool, unfused: frozenset[str]
) -> tuple[str, str]:
    """(form, why the storage form) for ``target`` in the mode being built."""
    if settings.mode == "weights":
        return _weights_form(target, settings, dq_scheme, unfused)
    if settings.mode == "dynamic":
        if not special_ok:
            return "storage", "dynamic int8 needs opset 10"
        reason = dynamic_reason(target)
        return ("storage", reason) if reason else ("dynamic", "")
    return "storage", ""


def _unfused_dequantize(model: onnx.ModelProto, quantized: list[dict]) -> set[str]:
    """MatMul/Gemm weights whose DequantizeLinear is still in the graph onnxruntime runs."""
    wanted = {
        item["tensor"] for item in quantized if item["form"] == "dequantize_linear" and item["op_types"] != ["Conv"]
    }
    if not wanted:
        return set()
    try:
        optimized = session_graph(model)
    except Exception:  # noqa: BLE001 - e.g. over 2 GB: the fusion check is skipped, the forms stay as built
        return set()
    left = {
        out
        for g, _ in onnxshrink.iter_graphs(optimized.graph)
        for n in g.node
        if n.op_type == "DequantizeLinear"
        for out in n.output
    }
    return wanted & left


def _build_static(
    work: onnx.ModelProto, settings: Settings, keep_float: tuple[str, ...], calibrated: static_qdq.Calibrated | None
) -> Built:
    notes: list[str] = []
    if any(t.data_type == TensorProto.FLOAT16 for t in onnxshrink.iter_tensors(work.graph)):
        notes.append(
            "float16 model: static QDQ needs float32 activations; weights stored with the folded chain instead"
        )
        storage = replace(settings, mode="storage")
        built = _build_weight_forms(work, storage, keep_float)
        built.notes[:0] = notes
        return built
    if calibrated is None:
        raise ValueError("static mode needs a calibrated model")
    qdq = static_qdq.quantize_calibrated(
        calibrated, settings.static, exclude_nodes=_excluded_labels(calibrated.model, settings, keep_float)
    )
    notes.extend(calibrated.notes)
    quantized = static_qdq.qdq_weights(qdq)
    # What the QDQ pass left float (If/Loop branches, ops it skips) still shrinks with the folded chain.
    plan = _plan(qdq, settings, keep_float)
    taken = onnxshrink.all_names(qdq)
    left = list(plan.left)
    for label, why in calibrated.unsafe_nodes.items():
        left.append({"node": label, "reason": why})
    for target in plan.targets:
        why = (
            "in an If/Loop branch, which onnxruntime's QDQ quantizer does not reach"
            if target.weight.in_subgraph
            else _unsafe_reason(target, calibrated) or "left float by onnxruntime's QDQ quantizer"
        )
        quantized.append(
            write_storage(qdq, target, settings.scheme, taken, note=f"stored with the folded chain: {why}")
        )
    return Built(qdq, quantized, left, notes, {})


def _excluded_labels(model: onnx.ModelProto, settings: Settings, keep_float: tuple[str, ...]) -> list[str]:
    excluded = set(settings.exclude) | set(keep_float)
    out = []
    for node in model.graph.node:
        if node_label(node) in excluded or node.op_type in excluded or any(i in excluded for i in node.input):
            out.append(node_label(node))
    return out


def _unsafe_reason(target, calibrated: static_qdq.Calibrated) -> str | None:
    for label in target.layers:
        if label in calibrated.unsafe_nodes:
            return calibrated.unsafe_nodes[label]
    return None
