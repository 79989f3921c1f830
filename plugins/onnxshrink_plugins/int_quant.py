"""int_quant: integer quantization of weights (int8, int4, int2): storage, weight-only, dynamic and static."""

from __future__ import annotations

import math
from typing import Any

import onnx

import onnxshrink
from onnxshrink import Method, Option

from .quant import auto
from .quant.build import MODES, Built, Settings, build
from .quant.forms import Scheme
from .quant.measure import outputs, synthetic_feeds
from .quant.sensitivity import mixed_precision, quantizable_layers
from .quant.static import CALIBRATION_METHODS, Calibrated, StaticSettings, calibrate
from .quant.targets import QUANTIZABLE_OPS, WEIGHTED_OPS
from .shared.input_weights import INPUT_WEIGHTS_OPTION, FreedInputs

DEFAULT_SUBBYTE_BLOCK = 32
MEASURABLE_BYTES = 2**31 - 2**26  # a serialized ModelProto must stay under 2 GB
# when options apply (Option.only_with): the modes that use them
STATIC = {"mode": ("static", "auto")}
WEIGHTS = {"mode": ("weights", "auto")}
AUTO = {"mode": ("auto",)}


class IntQuant(Method):
    """
    Quantize every float weight onnxruntime folds (Conv, Gemm, MatMul, LSTM/GRU, embeddings...) to int8, int4 or int2.

    Modes (``mode=``):

    - ``storage``: integer weights in the file plus a Cast → Mul chain (Sub for zero points, Div/Mod to
      unpack sub-byte values) that onnxruntime folds back to float weights when it creates the session.
      Weights take about 4x fewer bytes at int8 (6.4x at int4 with blocks of 32); run time is the float
      model's; every op and every execution provider is covered.
    - ``weights``: weight-only integer kernels for 2-D MatMul/Gemm weights: onnxruntime's
      com.microsoft::MatMulNBits (2, 4 or 8 bits, blocks along K, ``accuracy_level`` in the file), or
      with ``weights_format=dequantize_linear`` a standard DequantizeLinear that onnxruntime fuses into
      MatMulNBits (checked: weights it does not fuse take the storage form). Conv weights (no
      weight-only Conv kernel; ``dq_conv=true`` writes DequantizeLinear for EPs that fuse it) and
      float16 weights take the storage form. Weight-only kernels beat float only where MatMuls are
      large enough; see docs/methods/int_quant.md for measurements.
    - ``dynamic``: MatMul/Gemm activations quantized at run time (DynamicQuantizeLinear → MatMulInteger,
      fused into DynamicQuantizeMatMul); Conv weights take the storage form (ConvInteger is slower
      than float Conv on the CPU EP). int8 only.
    - ``static``: QDQ with calibrated activation ranges (min-max, percentile or entropy, using
      onnxruntime.quantization's calibrators and QDQ quantizer, with Constant-node weights, opset 11/12
      per-channel, subgraph weights and blown-up ranges handled); the CPU EP fuses it into QLinearConv,
      QLinearMatMul and QGemm. Needs calibration data. int8 only.
    - ``auto`` (default): builds every mode that applies and judges each against the float model on
      calibration feeds held back from calibrating (static ranges and sensitivity come from every other
      feed): the worst per-feed cosine of each output, CPU latency and size. It keeps the smallest one
      that meets ``target_cosine`` and is not slower than float (within ``latency_tolerance``). A
      candidate that fails is recorded with its error and skipped. When none is good, it tries
      sensitivity-driven mixed precision in the storage form (the most sensitive layers kept at int8
      under a sub-byte build, then at float16, then float) before leaving the model float; every
      "kept" or "left float" message names the criterion, the value reached and the target. The
      choice rests on timings, so two runs can differ when two modes are equally fast; pin ``mode``
      for byte-identical builds.

    Covered weights: Conv, ConvTranspose, Gemm, MatMul, LSTM/GRU/RNN W and R, Gather tables
    (``embeddings``), Einsum operands and constants reshaped before use (the last five in the storage
    form); float constants only Shape/Size read become ConstantOfShape.
    Weights in Constant nodes, shared by several nodes, and inside If/Loop branches are quantized;
    float16/bfloat16/double weights take the storage form; weights that are also graph inputs,
    1-D tensors, tensors under ``min_size`` and custom-domain ops are left float and listed with the
    reason. A model that is already quantized (QDQ, QLinear*, MatMulNBits, integer weights cast to
    float...) is left unchanged. ``sensitivity=true`` measures each layer's effect on the outputs and
    keeps the most sensitive layers float until ``target_cosine`` is met (mixed precision).
    """

    name = "int_quant"
    kind = "quantize"
    options = (
        Option(
            "mode",
            str,
            "auto",
            "auto | storage | weights | dynamic | static (see the method's doc).",
            choices=("auto", *MODES),
        ),
        Option("bits", int, 8, "Weight bits: 8, 4 or 2 (4 and 2 for storage and weights modes).", choices=(8, 4, 2)),
        Option("per_channel", bool, True, "One scale per output channel (false: one per tensor). Ignored with blocks."),
        Option("symmetric", bool, True, "Signed weights without zero point (false: unsigned with zero points)."),
        Option(
            "block_size",
            int,
            None,
            f"Weights per scale along the reduction axis (default {DEFAULT_SUBBYTE_BLOCK} below 8 bits, none at 8; "
            "0: no blocks).",
            min=0,
        ),
        Option(
            "calibration",
            str,
            "minmax",
            "Static activation ranges: minmax, percentile or entropy (KL).",
            choices=CALIBRATION_METHODS,
            only_with=STATIC,
        ),
        Option(
            "percentile",
            float,
            99.999,
            "Percentile kept by calibration=percentile.",
            min=50.0,
            max=100.0,
            only_with={**STATIC, "calibration": ("percentile",)},
        ),
        Option(
            "calibration_samples",
            int,
            64,
            "Most calibration feeds used (static ranges, sensitivity, auto).",
            min=1,
        ),
        Option(
            "activation_type",
            str,
            "uint8",
            "Static activations: uint8 (asymmetric) or int8 (symmetric).",
            choices=("uint8", "int8"),
            only_with=STATIC,
        ),
        Option(
            "qdq_ops",
            str,
            "all",
            "Static: all (every op onnxruntime runs quantized, as quantize_static) or weighted "
            "(Conv/MatMul/Gemm layers only).",
            choices=("all", "weighted"),
            only_with=STATIC,
        ),
        Option(
            "reduce_range",
            bool,
            True,
            "Static and dynamic: 7-bit weights (within ±63), so uint8 x int8 products cannot saturate the int16 "
            "sums of x86 CPUs without VNNI; false: the full int8 range.",
            only_with={"mode": ("static", "dynamic", "auto")},
        ),
        Option(
            "op_types",
            list,
            list(QUANTIZABLE_OPS),
            "Op types whose weights are quantized (LSTM/GRU/RNN: W and R, storage form).",
            choices=QUANTIZABLE_OPS,
        ),
        Option("exclude", list, None, "Node names, op types or weight names to leave float, e.g. [fc,Conv]."),
        Option(
            "embeddings",
            bool,
            True,
            "Quantize Gather tables (embeddings) too, in the storage form (false: leave them float).",
        ),
        Option("min_size", int, 64, "Leave weights with fewer elements float.", min=0),
        INPUT_WEIGHTS_OPTION,
        Option(
            "sensitivity",
            bool,
            False,
            "Measure per-layer sensitivity and keep the most sensitive layers float until target_cosine is met.",
        ),
        Option(
            "target_cosine",
            float,
            0.995,
            "Fidelity target (lowest output cosine vs the float model) for sensitivity and mode=auto.",
            min=0.0,
            max=1.0,
        ),
        Option(
            "prefer",
            str,
            "size",
            "mode=auto: size (the smallest good candidate; ties within 2% go to the fastest) or speed "
            "(the fastest good candidate smaller than float).",
            choices=("size", "speed"),
            only_with=AUTO,
        ),
        Option(
            "latency_tolerance",
            float,
            0.05,
            "mode=auto: a candidate counts as not slower up to (1 + this) x the float latency.",
            min=0.0,
            max=1.0,
            only_with=AUTO,
        ),
        Option(
            "opset_upgrade",
            bool,
            True,
            "Raise the opset when a form needs it (13 per-channel, 21 int4/blocks, 25 int2); false: fall back.",
        ),
        Option(
            "weights_format",
            str,
            "matmulnbits",
            "mode=weights: matmulnbits (onnxruntime's com.microsoft::MatMulNBits, any opset) or dequantize_linear "
            "(standard ONNX, fused by onnxruntime into MatMulNBits; opset 13/21/25).",
            choices=("matmulnbits", "dequantize_linear"),
            only_with=WEIGHTS,
        ),
        Option(
            "accuracy_level",
            int,
            0,
            "weights_format=matmulnbits: 0 computes in float32; 1-4 let the kernel quantize activations "
            "(4: int8, faster only on CPUs with VNNI/AMX).",
            min=0,
            max=4,
            only_with={**WEIGHTS, "weights_format": ("matmulnbits",)},
        ),
        Option(
            "dq_conv",
            bool,
            False,
            "mode=weights: DequantizeLinear in front of Conv weights too (for EPs that fuse it; the CPU EP does not).",
            only_with=WEIGHTS,
        ),
    )
    # Searched by `onnxshrink tune` (docs/plugin-authors.md, "Search space"); other options keep their defaults.
    search_space = (
        onnxshrink.Tunable("mode", choices=("storage", "weights")),
        onnxshrink.Tunable("bits", choices=(8, 4, 2), where="both"),
        onnxshrink.Tunable("block_size", choices=(0, 32, 128)),
        # mode=auto (the default) keeps sensitive layers wider until this target: the gate may allow less.
        onnxshrink.Tunable("target_cosine", choices=(0.995, 0.99, 0.98), where="default"),
    )

    @classmethod
    def check_options(cls, values: onnxshrink.Options, given: set[str]) -> None:
        mode, bits = values.mode, values.bits
        if bits < 8 and mode in ("dynamic", "static"):
            raise cls.option_error(f"mode={mode} is int8 only; bits={bits} works with mode=storage, weights or auto")
        if values.block_size and mode in ("dynamic", "static"):
            raise cls.option_error(f"block_size does not apply to mode={mode} (int8 per-channel or per-tensor)")
        if values.block_size == 1:
            raise cls.option_error("block_size=1 stores one scale per weight; use 0 (no blocks) or 2 and more")
        if "per_channel" in given and values.block_size:
            raise cls.option_error("give per_channel or block_size, not both (blocks replace per-channel scales)")
        if "target_cosine" in given and mode != "auto" and not values.sensitivity:
            raise cls.option_error("target_cosine needs sensitivity=true or mode=auto")
        if not values.op_types:
            raise cls.option_error("op_types is empty; name at least one of " + ", ".join(QUANTIZABLE_OPS))

    @classmethod
    def not_applicable(cls, model: onnx.ModelProto) -> str | None:
        markers = onnxshrink.quantization_markers(model)
        return f"the model is already quantized ({markers[0]})" if markers else None

    def apply(self, model: onnx.ModelProto, options: onnxshrink.Options, context: onnxshrink.Context) -> dict[str, Any]:
        markers = onnxshrink.quantization_markers(model)
        if markers:
            context.warn(
                f"the model is already quantized ({markers[0]}{' and more' if len(markers) > 1 else ''}); "
                "left unchanged"
            )
            return {
                "mode": None,
                "requested_mode": options.mode,
                "already_quantized": markers[:50],
                "quantized_tensors": 0,
                "quantized": [],
                "left": [],
            }
        self.check_exclude(model, options.exclude)
        settings = _settings(options)
        mode = options.mode
        freed = FreedInputs(model, options.input_weights)
        freed.log(context)
        needs_data = mode in ("auto", "static") or options.sensitivity
        on_disk = any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
        if needs_data and on_disk and mode == "auto" and not options.sensitivity:
            # choosing runs every candidate in memory; a model whose weights stay on disk gets the form that
            # is never slower and shrinks the file the most without measuring (storage)
            context.warn(
                "the model keeps its weights in external data, which mode=auto cannot run candidates on; "
                "mode=storage used without a measured choice"
            )
            mode, needs_data = "storage", False
            options = options.replace(mode="storage")
        elif needs_data and on_disk:
            raise self.option_error(
                f"mode={mode}{', sensitivity' if options.sensitivity else ''} runs the model in memory, "
                "and this model keeps its weights in external data; use mode=storage or weights"
            )
        if needs_data and model.ByteSize() > MEASURABLE_BYTES:
            raise self.option_error(
                f"mode={mode}{', sensitivity' if options.sensitivity else ''} runs the model in memory "
                "and supports models under 2 GB; use mode=storage or weights"
            )
        feeds = _feeds(model, options, context) if needs_data else []
        extra: dict[str, Any] = {}
        # auto and sensitivity decide on feeds held back from calibrating and ranking
        fit, check = _held_back(feeds, extra) if mode == "auto" or options.sensitivity else (feeds, feeds)
        calibrated, static_skip = None, None
        if mode in ("static", "auto"):
            calibrated, static_skip = _calibrate(model, settings, fit, options, context)
        if mode == "auto":
            built, chosen = _auto(model, settings, fit, check, calibrated, static_skip, options, context, extra)
        elif options.sensitivity:
            built, chosen = _mixed(model, settings, fit, check, calibrated, options, context, extra), mode
        else:
            progress = lambda total: context.progress("quantizing weights", total, unit="B")  # noqa: E731
            built, chosen = build(model, settings, calibrated=calibrated, in_place=True, progress=progress), mode
        if built is not None and built.model is not model:
            model.CopyFrom(built.model)
        if built is None or not built.quantized:  # left float: the inputs stay as declared
            freed.restore()
        stats = _summary(built, chosen, options, settings)
        if calibrated is not None and chosen == "static":
            stats["static"] = {
                "calibration": options.calibration,
                "calibration_feeds": calibrated.feeds,
                "calibration_samples": calibrated.samples,
                "synthetic_data": context.calibration_is_synthetic or not context.calibration_feeds(),
                "activation_type": options.activation_type,
                "per_channel": calibrated.per_channel,
                "kept_float_nodes": dict(calibrated.unsafe_nodes),
            }
        stats.update(extra)
        if freed.count:
            stats["input_weights_made_constant"] = freed.count
        if built is not None and not built.quantized:
            context.warn("no weight was quantized; the model is unchanged (see 'left' for why)")
        return stats


def _settings(options: onnxshrink.Options) -> Settings:
    """The build settings: the options named like their fields, with the block size and modes resolved."""
    block = options.block_size
    if block is None:
        block = DEFAULT_SUBBYTE_BLOCK if options.bits < 8 else 0
    static = options.into(StaticSettings, op_types=tuple(op for op in options.op_types if op in WEIGHTED_OPS))
    return options.into(
        Settings,
        mode=options.mode if options.mode != "auto" else "storage",
        scheme=options.into(Scheme, block_size=block or None),
        exclude=tuple(options.exclude or ()),
        op_types=tuple(options.op_types),
        static=static,
    )


def _feeds(model: onnx.ModelProto, options: onnxshrink.Options, context: onnxshrink.Context) -> list[dict]:
    """The calibration feeds (at most calibration_samples of them), or random ones with a warning."""
    feeds = list(context.calibration_feeds())[: options.calibration_samples]
    if not feeds and options.mode == "static":
        raise onnxshrink.UsageError(
            "plugin 'int_quant': mode=static needs calibration data; pass --data (a .npz of model inputs)"
        )
    if not feeds:
        feeds = synthetic_feeds(model, context.rng, count=min(8, options.calibration_samples))
    if context.calibration_is_synthetic or not context.calibration_feeds():
        what = "static ranges calibrated" if options.mode == "static" else "sensitivity and mode=auto measured"
        context.warn(f"no calibration data: {what} on random inputs; pass --data with real inputs for faithful numbers")
    return feeds


def _held_back(feeds: list[dict], extra: dict[str, Any]) -> tuple[list[dict], list[dict]]:
    """(feeds to calibrate and rank layers on, feeds to choose on): alternate feeds, so both see every
    source of an interleaved data set. A single feed serves both, and the stats say so."""
    if len(feeds) < 2:
        extra["choice_feeds"] = {
            "calibrate": len(feeds),
            "choose": len(feeds),
            "note": "one feed: chosen on the feed it calibrated on",
        }
        return feeds, feeds
    fit, check = feeds[0::2], feeds[1::2]
    extra["choice_feeds"] = {
        "calibrate": len(fit),
        "held_back": len(check),
        "note": (
            "static ranges and layer sensitivity from every other feed; "
            "static judged on the feeds held back from it, the uncalibrated forms on all of them"
        ),
    }
    return fit, check


def _calibrate(model, settings: Settings, feeds, options, context) -> tuple[Calibrated | None, str | None]:
    """Calibrated ranges for mode=static (and for auto's static candidate), or why there are none."""
    if options.mode == "auto":
        if options.bits < 8:
            return None, "static QDQ is int8 only"
        if context.calibration_is_synthetic or not context.calibration_feeds():
            return None, "no calibration data (--data)"
    if any(t.data_type == onnx.TensorProto.FLOAT16 for t in onnxshrink.iter_tensors(model.graph)):
        return None, "float16 model" if options.mode == "auto" else None
    with context.progress("calibrating activation ranges", total=None):
        if options.mode != "auto":
            return calibrate(model, feeds, settings.static), None
        try:
            return calibrate(model, feeds, settings.static), None
        except Exception as exc:  # noqa: BLE001 - auto records it and tries the other modes
            return None, f"calibration failed: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}"


def _auto(
    model, settings: Settings, feeds, check, calibrated, static_skip, options, context, extra
) -> tuple[Built | None, str | None]:
    modes = ["storage", "weights"] + (["dynamic", "static"] if options.bits == 8 else [])
    skipped = {"static": static_skip} if static_skip and "static" in modes else {}
    if options.bits < 8:
        skipped.update({m: f"int8 only (bits={options.bits})" for m in ("dynamic", "static")})
    reference = outputs(model, feeds)
    check_reference = reference if check is feeds else outputs(model, check)
    # when no mode meets the target: sensitive layers kept at int8 (under a sub-byte build), then
    # float16 with the next ones at int8, then float16, then float
    fallback: list[Scheme | tuple[Scheme, Scheme] | None] = [Scheme(bits=16), None]
    if options.bits < 8:
        int8 = Scheme(bits=8, symmetric=settings.scheme.symmetric, per_channel=True)
        fallback[:0] = [int8, (Scheme(bits=16), int8)]
    with context.progress("trying representations", total=None) as task:
        choice = auto.choose(
            model,
            settings,
            modes,
            feeds,
            reference,
            target=options.target_cosine,
            tolerance=options.latency_tolerance,
            prefer=options.prefer,
            calibrated=calibrated,
            sensitivity=options.sensitivity,
            skipped=skipped,
            advance=task.advance,
            check=(check, check_reference),
            fallback=fallback,
        )
    extra["auto"] = choice.report
    for row in choice.report["tried"]:
        if row.get("verdict") == "failed":
            context.warn(f"mode={row['mode']} failed and was skipped: {row['error']}")
    if choice.built is None:
        context.warn(choice.report["why"])
    else:
        context.log(f"auto chose {choice.report['why']}")
    return choice.built, choice.mode


def _mixed(model, settings: Settings, feeds, check, calibrated, options, context, extra) -> Built:
    reference = outputs(model, feeds)
    check_reference = reference if check is feeds else outputs(model, check)
    layers = quantizable_layers(model, settings, calibrated)
    with context.progress("measuring layer sensitivity", total=len(layers)) as task:
        result = mixed_precision(
            model,
            settings,
            feeds,
            reference,
            options.target_cosine,
            calibrated,
            task.advance,
            check=(check, check_reference),
        )
    if not result.met_target:
        context.warn(
            f"sensitivity: worst per-feed cosine {result.cosine:.6f} < target {options.target_cosine} "
            "even with every layer kept float"
        )
    extra["sensitivity"] = {
        "target_cosine": options.target_cosine,
        "cosine": round(result.cosine, 8),
        "met_target": result.met_target,
        "kept_float": result.kept_float,
        "searched": result.searched,
        "layers": result.table,
    }
    return result.built


def _summary(built: Built | None, mode: str | None, options: onnxshrink.Options, settings: Settings) -> dict[str, Any]:
    if built is None:
        return {"mode": None, "requested_mode": options.mode, "quantized_tensors": 0, "quantized": [], "left": []}
    forms: dict[str, int] = {}
    for item in built.quantized:
        forms[item["form"]] = forms.get(item["form"], 0) + 1
    params = sum(math.prod(item["shape"]) for item in built.quantized)
    return {
        "mode": mode,
        "requested_mode": options.mode,
        "bits": options.bits if mode not in ("dynamic", "static") else 8,
        "scheme": _scheme_text(settings.scheme, mode),
        "quantized_tensors": len(built.quantized),
        "left_tensors": sum(1 for item in built.left if "tensor" in item),
        "params_quantized": params,
        "forms": forms,
        "weight_bytes_before": sum(item.get("bytes_before", 0) for item in built.quantized),
        "weight_bytes_after": sum(item.get("bytes_after", 0) for item in built.quantized),
        "opset": built.opset,
        "notes": built.notes,
        "quantized": built.quantized,
        "left": built.left,
        **({"shape_only": built.shape_only} if built.shape_only else {}),
    }


def _scheme_text(scheme: Scheme, mode: str | None) -> str:
    bits = 8 if mode in ("dynamic", "static") else scheme.bits
    kind = f"{'int' if scheme.symmetric else 'uint'}{bits} {'symmetric' if scheme.symmetric else 'asymmetric'}"
    if scheme.block_size and mode not in ("dynamic", "static"):
        return f"{kind} blockwise(block={scheme.block_size})"
    return f"{kind} {'per-channel' if scheme.per_channel else 'per-tensor'}"


@onnxshrink.hookimpl
def register_methods(register):
    register(IntQuant)
