"""gptq: error-compensating (second-order) weight quantization from calibration activations, plus bias correction."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx

import onnxshrink
from onnxshrink import Method, Option, QuantizedTensor, SegmentRunner

from ..quant.shape_only import shape_only_constants
from ..shared.input_weights import INPUT_WEIGHTS_OPTION, FreedInputs
from ..shared.layers import (
    RESHAPED_OPS,
    TABLE_INPUTS,
    WEIGHT_INPUTS,
    Layer,
    LinearView,
    find_layers,
    linear_view,
    matrix_view,
    output_cosine,
)
from .bias import add_bias
from .core import Hessian, gptq, rtn

GPTQ_OPS = ("Conv", "Gemm", "MatMul")
TABLE_OPS = tuple(TABLE_INPUTS)  # Gather tables, LSTM/GRU/RNN W and R, Einsum operands: round to nearest in groups
OP_TYPES = (*GPTQ_OPS, *TABLE_OPS)
FORMS = ("packed", "smallest", "dequantize_linear", "auto")


class Gptq(Method):
    """Quantize MatMul, Gemm and Conv weights to 2-8 bits with GPTQ's error compensation.

    Round-to-nearest rounds every weight on its own. GPTQ (Frantar et al., 2022) quantizes a
    layer's weight one input column at a time and pushes each column's rounding error onto the
    columns not yet quantized, weighted by the inverse Hessian ``H = 2 X^T X`` of the layer's inputs X
    on the calibration data (Conv inputs as im2col patches), damped by ``percdamp``, with lazy block
    updates, optional activation order and groups of ``group_size`` inputs per scale. Layers are
    processed in graph order, each on the activations of the model whose earlier layers are already
    quantized (``sequential=true``). The grid is onnxshrink.quantize's min-max grid, so
    ``algorithm=rtn`` gives plain round-to-nearest on the same grid for comparison.

    Bias correction (``bias_correction=true``) then measures each quantized layer's mean output
    error per output channel on the calibration data (against the float model's layer output)
    and subtracts it through the layer's bias (a new bias input or an Add after the node when needed).

    Storage (``form``): ``packed`` (default) writes the codes packed at ``bits`` bits with a decode
    chain onnxruntime folds at load (file about 32/bits times smaller for these weights, run time
    and outputs of the dense dequantized model); ``smallest`` picks packed or sparse per tensor;
    ``dequantize_linear`` writes int4/int8 DequantizeLinear (opset 21 for blocks and int4, raised
    when ``opset_upgrade=true``), which onnxruntime fuses with MatMul into MatMulNBits but runs in
    front of Conv on every inference. Weights in If/Loop subgraphs (their inputs cannot be
    observed), grouped or 3-D Conv and Gemm/MatMul weights on the left input are rounded to nearest
    on the same grid, or per output channel, and listed with the reason. Gather tables (embeddings)
    LSTM/GRU/RNN W and R, Einsum operands and constants reshaped before use have no linear map to
    take a Hessian from: they are rounded to nearest
    in groups of ``group_size`` along their reduction axis and stored packed (folded at load), so
    a transformer's or a recurrent model's file shrinks as a whole. Float constants only Shape or
    Size read (exporter leftovers) become ConstantOfShape (``stats.shape_only``). Needs calibration data
    (``--data``); without it random inputs are used and a warning says so. Initializers that are also
    graph inputs are quantized only when ``input_weights`` makes them constants (by default: when
    every initializer is one, the layout older exporters write).
    """

    name = "gptq"
    kind = "quantize"
    options = (
        Option("bits", int, 4, "Weight bits (2 to 8).", min=2, max=8),
        Option(
            "group_size",
            int,
            32,
            "Inputs per scale along the reduction axis; 0: one scale per output channel.",
            min=0,
        ),
        Option(
            "symmetric",
            bool,
            False,
            "Signed levels without zero points (false: unsigned with a zero point per group).",
        ),
        Option(
            "algorithm",
            str,
            "gptq",
            "gptq (error compensation) or rtn (round to nearest on the same grid, for comparison).",
            choices=("gptq", "rtn"),
        ),
        Option(
            "percdamp",
            float,
            0.01,
            "Damping added to the Hessian's diagonal, as a fraction of its mean.",
            min=0.0,
            max=1.0,
            only_with={"algorithm": ("gptq",)},
        ),
        Option("block", int, 128, "Columns per lazy update block.", min=1, only_with={"algorithm": ("gptq",)}),
        Option(
            "act_order",
            bool,
            False,
            "Quantize the most active inputs first (groups then use scales fixed from the original weights).",
            only_with={"algorithm": ("gptq",)},
        ),
        Option(
            "bias_correction",
            bool,
            True,
            "Fold each layer's mean output error on the calibration data into its bias.",
        ),
        Option(
            "sequential",
            bool,
            True,
            "Take each layer's inputs from the model with the earlier layers already quantized (false: from the "
            "float model).",
        ),
        Option(
            "form",
            str,
            "packed",
            "packed (folded at load), smallest (packed or sparse per tensor), dequantize_linear (int4/int8 "
            "DequantizeLinear) or auto (DequantizeLinear for MatMul weights where the model's opset already allows "
            "it, packed elsewhere).",
            choices=FORMS,
        ),
        Option(
            "opset_upgrade",
            bool,
            True,
            "form=dequantize_linear: raise the opset when needed (21 for int4/blocks); false: packed instead.",
            only_with={"form": ("dequantize_linear",)},
        ),
        Option(
            "op_types",
            list,
            list(OP_TYPES),
            "Op types whose weights are quantized (Gather tables, LSTM/GRU/RNN W and R, Einsum operands, Reshape "
            "data: rounded to nearest in groups, packed).",
            choices=OP_TYPES,
        ),
        Option("exclude", list, None, "Node names, op types or weight names to leave float."),
        Option("min_size", int, 64, "Leave weights with fewer elements float.", min=0),
        Option("calibration_samples", int, 64, "Most calibration feeds used.", min=1),
        INPUT_WEIGHTS_OPTION,
    )
    # Searched by `onnxshrink tune` (docs/plugin-authors.md, "Search space"); other options keep their defaults.
    search_space = (
        onnxshrink.Tunable("bits", low=2, high=8),
        onnxshrink.Tunable("group_size", choices=(32, 0, 128)),
        # The correction's Adds can survive onnxruntime's fusions and cost latency (zoo g2p_id_bert).
        onnxshrink.Tunable("bias_correction", choices=(True, False)),
    )

    @classmethod
    def check_options(cls, values: onnxshrink.Options, given: set[str]) -> None:
        if values.group_size == 1:
            raise cls.option_error("group_size=1 stores one scale per weight; use 0 (per output channel) or 2 and more")
        if not values.op_types:
            raise cls.option_error("op_types is empty; name at least one of " + ", ".join(OP_TYPES))

    @classmethod
    def not_applicable(cls, model: onnx.ModelProto) -> str | None:
        markers = onnxshrink.quantization_markers(model)
        return f"the model is already quantized ({markers[0]})" if markers else None

    def apply(self, model: onnx.ModelProto, options: onnxshrink.Options, context: onnxshrink.Context) -> dict[str, Any]:
        markers = onnxshrink.quantization_markers(model)
        if markers:
            context.warn(f"the model is already quantized ({markers[0]}); left unchanged")
            return {"quantized_tensors": 0, "already_quantized": markers[:20], "layers": [], "left": []}
        self.check_exclude(model, options.exclude)
        feeds = _feeds(model, options, context)
        freed = FreedInputs(model, options.input_weights)
        freed.log(context)
        work = onnx.ModelProto()
        work.CopyFrom(model)
        layers, left = find_layers(
            work, op_types=options.op_types, exclude=options.exclude or (), min_size=options.min_size
        )
        # both models run forward piece by piece, next to each other: each layer's inputs are taken
        # when the run reaches them, and only the weights of the piece being run are in memory
        floats = context.segments(model, feeds)
        quantized = context.segments(work, feeds)
        done: list[tuple[str, QuantizedTensor, tuple[int, ...], dict]] = []
        with context.progress(
            f"quantizing {len(layers)} layers", total=sum(layer.weight.nbytes for layer in layers), unit="B"
        ) as task:
            for layer in layers:
                qt, shape, row = _quantize_layer(layer, work, floats, quantized, options)
                quantized.overrides[layer.name] = _dequantized(qt, shape)
                done.append((layer.name, qt, shape, row))
                task.advance(layer.weight.nbytes)
        reference = [list(o.values()) for o in floats.outputs()]
        after = [list(o.values()) for o in quantized.outputs()]
        stored = _store(work, done, options, context)
        shape_only = shape_only_constants(work, options.min_size)
        model.CopyFrom(work)
        stats = _summary(done, stored, left, options)
        if shape_only:
            stats["shape_only"] = shape_only
        stats["calibration_output_cosine"] = round(output_cosine(reference, after), 6)
        if not done:
            freed.restore()
            context.warn("no weight matched; the model is unchanged (see 'left' for why)")
        elif freed.count:
            stats["input_weights_made_constant"] = freed.count
        return stats


def _feeds(model: onnx.ModelProto, options: onnxshrink.Options, context: onnxshrink.Context) -> list[dict]:
    feeds = list(context.calibration_feeds())[: options.calibration_samples]
    if not feeds:
        raise onnxshrink.UsageError("plugin 'gptq': needs calibration data; pass --data (a .npz of model inputs)")
    if context.calibration_is_synthetic:
        context.warn(
            "gptq calibrated on synthetic (random) inputs; pass --data with real inputs, "
            "or it may do worse than round-to-nearest"
        )
    return feeds


def _mean_rows(view: LinearView, values: list[np.ndarray]) -> np.ndarray:
    """Mean input row of the linear map over all feeds (float64)."""
    total, count = None, 0
    for x in values:
        rows = view.rows(x)
        part = rows.sum(axis=0, dtype=np.float64)
        total = part if total is None else total + part
        count += rows.shape[0]
    return total / max(count, 1)


def _views(layer: Layer) -> tuple[list[LinearView], str | None]:
    views = []
    for use in layer.uses:
        view, reason = linear_view(use, layer.weight.shape)
        if view is None:
            return [], reason
        views.append(view)
    if len({(v.kind, v.transposed) for v in views}) > 1:
        return [], "shared by nodes that read it in different layouts"
    return views, None


def _dequantized(qt: QuantizedTensor, shape: tuple[int, ...]):
    """The float values a quantized layer runs with (computed when a piece of the model needs them)."""
    return lambda: qt.dequantize().reshape(shape)


def _quantize_layer(
    layer: Layer, work, floats: SegmentRunner, quantized: SegmentRunner, options
) -> tuple[QuantizedTensor, tuple[int, ...], dict]:
    bits, symmetric, group = options.bits, options.symmetric, options.group_size
    array = layer.weight.array().astype(np.float32)
    views, reason = _views(layer)
    row: dict[str, Any] = {**layer.describe()}
    in_subgraph = layer.weight.in_subgraph or any(u.graph is not work.graph for u in layer.uses)
    observable_reason = (
        "read inside an If/Loop/Scan subgraph: its inputs cannot be observed, so rounded to nearest"
        if in_subgraph
        else None
    )
    observable = observable_reason is None
    if layer.op_type in RESHAPED_OPS:
        array = array.reshape(matrix_view(layer.weight.shape, max(group, 32)))
    if layer.op_type in TABLE_OPS:
        _, reduce_axis = onnxshrink.weight_axes(layer.uses[0], array.ndim)
        if group and array.shape[reduce_axis] >= group:
            qt = onnxshrink.quantize(array, bits, symmetric=symmetric, axis=reduce_axis, block_size=group)
            row.update(
                algorithm="rtn",
                granularity=f"groups of {group}",
                reason=f"{layer.op_type} weight: no linear map to take a Hessian from, so rounded to nearest",
            )
        else:
            qt = onnxshrink.quantize(
                array, bits, symmetric=symmetric, axis=0 if layer.op_type in RESHAPED_OPS else layer.axis
            )
            row.update(
                algorithm="rtn",
                granularity="per-channel",
                reason=f"{layer.op_type} weight: no linear map to take a Hessian from, "
                "so rounded to nearest per output channel",
            )
        return qt, layer.weight.shape, row
    if not views:
        qt = onnxshrink.quantize(array, bits, symmetric=symmetric, axis=layer.axis)
        row.update(
            algorithm="rtn", granularity="per-channel", reason=f"{reason}: rounded to nearest per output channel"
        )
        return qt, layer.weight.shape, row
    w = views[0].matrix(array)
    if w.shape[1] < max(group, 1):
        group = 0
    if not observable:
        qt, shape = views[0].stored(rtn(w, bits, symmetric, group))
        row.update(
            algorithm="rtn", granularity=f"groups of {group}" if group else "per-channel", reason=observable_reason
        )
        return qt, shape, row
    names = sorted({v.activation for v in views})
    float_inputs = floats.values(names)  # taken even when unused, so both runs move forward together
    activations = quantized.values(names) if options.sequential else float_inputs
    hessian = Hessian(w.shape[1])
    means_q = []
    for view in views:
        total = np.zeros(w.shape[1])
        before = hessian.rows
        for x in activations[view.activation]:
            rows = view.rows(x)
            hessian.add(rows)
            total += rows.sum(axis=0, dtype=np.float64)
        means_q.append(total / max(hessian.rows - before, 1))
    nearest = rtn(w, bits, symmetric, group)
    if options.algorithm == "gptq":
        qt_oi = gptq(
            w,
            hessian.h,
            bits,
            symmetric=symmetric,
            group_size=group,
            percdamp=options.percdamp,
            block=options.block,
            act_order=options.act_order,
        )
    else:
        qt_oi = nearest
    qt, shape = views[0].stored(qt_oi)
    row.update(
        algorithm=options.algorithm,
        granularity=f"groups of {group}" if group else "per-channel",
        calibration_rows=hessian.rows,
        error_rtn=round(hessian.error(w, nearest), 8),
        error=round(hessian.error(w, qt_oi), 8),
    )
    if options.bias_correction:
        row["bias_correction"] = _correct_bias(layer, views, w, qt_oi, means_q, work, float_inputs)
    return qt, shape, row


def _correct_bias(
    layer: Layer, views: list[LinearView], w, qt_oi, means_q, work, floats: dict[str, list[np.ndarray]]
) -> list[dict]:
    """Subtract each use's mean output error (quantized model vs float model, calibration data)."""
    wq = qt_oi.dequantize().astype(np.float64)
    out = []
    for use, view, mean_q in zip(layer.uses, views, means_q):
        mean_f = _mean_rows(view, floats[view.activation])
        delta = view.scale * (mean_q @ wq.T - mean_f @ np.asarray(w, np.float64).T)
        how = add_bias(work, use, -delta.astype(np.float32), layer.weight.dtype)
        out.append(
            {"node": use.node.name or use.node.output[0], "into": how, "mean_abs_shift": float(np.mean(np.abs(delta)))}
        )
    return out


PACKED_OPSET = 11  # the packed-bit decoder uses BitShift


def _store(work: onnx.ModelProto, done, options, context) -> list[onnxshrink.StoredWeight]:
    form = options.form
    if done and onnxshrink.model_opset(work) < PACKED_OPSET:
        try:
            work.CopyFrom(onnxshrink.upgrade_opset(work, PACKED_OPSET))
        except ValueError as exc:
            raise onnxshrink.UsageError(
                f"plugin 'gptq': the packed form needs opset {PACKED_OPSET} and {exc}"
            ) from None
    if form == "dequantize_linear" and done:
        needed = max(onnxshrink.required_opset(qt) for _, qt, _, _ in done)
        have = onnxshrink.model_opset(work)
        if have < needed:
            if not options.opset_upgrade:
                context.warn(
                    f"form=dequantize_linear needs opset {needed} (the model has {have}) and opset_upgrade=false: "
                    "packed form used"
                )
                form = "packed"
            else:
                try:
                    work.CopyFrom(onnxshrink.upgrade_opset(work, needed))
                except ValueError as exc:
                    context.warn(f"{exc}; packed form used")
                    form = "packed"
    # found again (the opset upgrade copies the model); same order as find_layers, so equal names in
    # different subgraphs pair up in order
    found = onnxshrink.weight_tensors(work, {op: WEIGHT_INPUTS[op] for op in OP_TYPES})
    stored = []
    for name, qt, shape, _ in done:
        weight = found.pop(next(i for i, w in enumerate(found) if w.name == name))
        chosen = _auto_form(work, weight, qt) if form == "auto" else form
        if chosen == "dequantize_linear" and any(u.node.op_type in TABLE_OPS for u in weight.uses):
            chosen = "packed"  # no kernel fuses DequantizeLinear into Gather or LSTM: it would run every inference
        stored.append(onnxshrink.store_weight(work, weight, qt, form=chosen, shape=shape))
    return stored


def _auto_form(model: onnx.ModelProto, weight: onnxshrink.WeightTensor, qt: QuantizedTensor) -> str:
    """DequantizeLinear for a 2-D weight read only by MatMul (onnxruntime runs it as MatMulNBits) when the
    opset already allows it and the width is a standard type's (4 or 8 bits; 2 at opset 25); else packed."""
    opset = onnxshrink.model_opset(model)
    standard = qt.bits in (4, 8) or qt.bits == 2 and opset >= 25
    only_matmul = all(u.node.op_type == "MatMul" for u in weight.uses) and qt.values.ndim == 2
    return "dequantize_linear" if standard and only_matmul and opset >= onnxshrink.required_opset(qt) else "packed"


def _summary(done, stored, left, options) -> dict[str, Any]:
    rows = [{**row, **entry.describe()} for (_, _, _, row), entry in zip(done, stored)]
    elements = sum(entry.elements for entry in stored)
    stored_bytes = sum(entry.stored_bytes for entry in stored)
    errors = [(r["error"], r["error_rtn"]) for r in rows if "error" in r]
    return {
        "algorithm": options.algorithm,
        "bits": options.bits,
        "group_size": options.group_size,
        "symmetric": options.symmetric,
        "form": options.form,
        "quantized_tensors": len(rows),
        "quantized_params": elements,
        "bits_per_weight": round(8 * stored_bytes / elements, 4) if elements else 0.0,
        "weight_bytes_float32": 4 * elements,
        "weight_bytes_stored": stored_bytes,
        "mean_relative_error": round(float(np.mean([e for e, _ in errors])), 8) if errors else None,
        "mean_relative_error_rtn": round(float(np.mean([e for _, e in errors])), 8) if errors else None,
        "layers": rows,
        "left": left,
    }


@onnxshrink.hookimpl
def register_methods(register):
    register(Gptq)
