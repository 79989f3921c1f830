"""binarize: 1-bit (XNOR-Net) or ternary weights, chosen greedily under a fidelity budget, stored packed."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx

import onnxshrink
from onnxshrink import Method, Option, QuantizedTensor

from .shared.layers import WEIGHTED_OPS, Layer, find_layers, first_and_last, output_cosine

PACKED_OPSET = 11  # the packed-bit decoder uses BitShift

HONEST_NOTE = (
    "binarizing or ternarizing a trained network without retraining usually destroys its accuracy; "
    "the fidelity numbers here are measured on the calibration data, not promised"
)


def binarize(array: np.ndarray, axis: int) -> QuantizedTensor:
    """W ≈ α·sign(W) with α = mean |W| per output channel (``axis``); zeros count as +1."""
    reduce = tuple(i for i in range(array.ndim) if i != axis)
    alpha = np.mean(np.abs(array), axis=reduce).astype(np.float32)
    signs = np.where(array >= 0, 1, -1).astype(np.int8)
    return QuantizedTensor(signs, alpha, None, 1, axis)


def ternarize(array: np.ndarray, axis: int, threshold: float) -> QuantizedTensor:
    """W ≈ α·t, t in {-1, 0, +1}: zero where |W| <= threshold·mean|W| (per output channel),
    α = mean |W| of the rest (TWN)."""
    reduce = tuple(i for i in range(array.ndim) if i != axis)
    magnitude = np.abs(array)
    delta = threshold * np.mean(magnitude, axis=reduce, keepdims=True)
    kept = magnitude > delta
    counts = np.sum(kept, axis=reduce, keepdims=True)
    alpha = np.where(counts > 0, np.sum(magnitude * kept, axis=reduce, keepdims=True) / np.maximum(counts, 1), 0)
    values = (np.sign(array) * kept).astype(np.int8)
    return QuantizedTensor(values, alpha.reshape(-1).astype(np.float32), None, 2, axis)


class Binarize(Method):
    """Binarize (1 bit, W ≈ α·sign(W)) or ternarize (2 bits) weights while fidelity stays within a budget.

    XNOR-Net style: each output channel keeps one float scale α = mean |W| and the signs of its
    weights, stored packed at 1 bit per weight (about 32x smaller for those tensors; the ternary
    variant {-α, 0, +α} with a threshold of ``threshold``·mean |W| uses 2 bits, or sparse storage when
    smaller). onnxruntime folds the unpacking at load, so run time does not change.

    Layers are chosen greedily: each candidate is scored by how far the outputs move on the
    calibration data with only it binarized, then binarized least sensitive first, keeping each one
    only while the whole model's fidelity loss (1 - top-1 agreement with the float model, or
    1 - output cosine) stays within ``budget``. By default the first and last weighted layers stay
    float. Binarizing a trained network without retraining usually destroys its accuracy: expect
    few layers within a small budget, and read the measured drop in the stats (``budget=1``
    binarizes every candidate and reports what that costs).
    """

    name = "binarize"
    kind = "quantize"
    options = (
        Option(
            "variant",
            str,
            "binary",
            "binary (1 bit, ±α) or ternary (2 bits, {-α, 0, +α}).",
            choices=("binary", "ternary"),
        ),
        Option(
            "budget",
            float,
            0.02,
            "Largest fidelity loss allowed on the calibration data (1 binarizes every candidate).",
            min=0.0,
            max=1.0,
        ),
        Option(
            "metric",
            str,
            "auto",
            "Fidelity: agreement (top-1 agreement with the float model), cosine (lowest output cosine) or auto "
            "(agreement for (N, classes) outputs).",
            choices=("auto", "agreement", "cosine"),
        ),
        Option(
            "threshold",
            float,
            0.7,
            "Ternary: weights with |w| <= threshold x mean|w| of their channel become 0.",
            min=0.0,
            max=10.0,
            only_with={"variant": ("ternary",)},
        ),
        Option("keep_first_last", bool, True, "Leave the first and the last weighted layers float."),
        Option("op_types", list, list(WEIGHTED_OPS), "Op types whose weights may be binarized.", choices=WEIGHTED_OPS),
        Option("exclude", list, None, "Node names, op types or weight names to leave float."),
        Option("min_size", int, 64, "Leave weights with fewer elements float.", min=0),
        Option("calibration_samples", int, 64, "Most calibration feeds used.", min=1),
    )
    # Searched by `onnxshrink tune` (docs/plugin-authors.md, "Search space"); other options keep their defaults.
    search_space = (
        onnxshrink.Tunable("variant", choices=("binary", "ternary")),
        onnxshrink.Tunable("budget", low=0.005, high=0.1, log=True),
    )

    @classmethod
    def check_options(cls, values: onnxshrink.Options, given: set[str]) -> None:
        if not values.op_types:
            raise cls.option_error("op_types is empty; name at least one of " + ", ".join(WEIGHTED_OPS))

    def apply(self, model: onnx.ModelProto, options: onnxshrink.Options, context: onnxshrink.Context) -> dict[str, Any]:
        self.check_exclude(model, options.exclude)
        opset = onnxshrink.model_opset(model)
        if opset >= PACKED_OPSET:
            return self._apply(model, options, context)
        # the packed decoder needs BitShift: convert first, and give the model back untouched if nothing is stored
        original = onnx.ModelProto()
        original.CopyFrom(model)
        try:
            model.CopyFrom(onnxshrink.upgrade_opset(model, PACKED_OPSET))
        except ValueError as exc:
            raise onnxshrink.UsageError(
                f"plugin 'binarize': the packed form needs opset {PACKED_OPSET} and {exc}"
            ) from None
        stats = self._apply(model, options, context)
        if stats["binarized_tensors"]:
            stats["opset_upgraded"] = f"{opset} -> {PACKED_OPSET}"
        else:
            model.CopyFrom(original)
        return stats

    def _apply(
        self, model: onnx.ModelProto, options: onnxshrink.Options, context: onnxshrink.Context
    ) -> dict[str, Any]:
        layers, left = find_layers(
            model, op_types=options.op_types, exclude=options.exclude or (), min_size=options.min_size
        )
        if options.keep_first_last:
            ends = first_and_last(model, layers)
            left += [
                {**layer.describe(), "reason": "first or last weighted layer (keep_first_last=true)"}
                for layer in layers
                if layer.name in ends
            ]
            layers = [layer for layer in layers if layer.name not in ends]
        feeds = list(context.calibration_feeds())[: options.calibration_samples]
        if not feeds:
            raise onnxshrink.UsageError(
                "plugin 'binarize': needs calibration data to measure fidelity; pass --data (a .npz of model inputs)"
            )
        if context.calibration_is_synthetic:
            context.warn(
                "fidelity measured on synthetic (random) inputs; pass --data with real inputs for a meaningful budget"
            )
        quantized = {layer.name: self._quantize(layer, options) for layer in layers}
        judge = _Fidelity(model, feeds, options.metric, context)
        originals = {layer.name: layer.weight.array() for layer in layers}

        def fidelity_with(chosen: list[Layer]) -> dict[str, float]:
            for layer in chosen:
                layer.weight.set_array(quantized[layer.name].dequantize())
            try:
                return judge.measure(model)
            finally:
                for layer in chosen:
                    layer.weight.set_array(originals[layer.name])

        table, kept, trail = [], [], []
        with context.progress("measuring layer sensitivity", total=2 * len(layers)) as task:
            for layer in layers:
                scores = fidelity_with([layer])
                table.append(
                    {
                        **layer.describe(),
                        "loss_alone": round(scores["loss"], 6),
                        "cosine_alone": round(scores["cosine"], 6),
                    }
                )
                task.advance()
            # ties in a coarse metric (agreement moves in steps of 1/samples) go to the better cosine
            order = sorted(
                range(len(layers)), key=lambda i: (table[i]["loss_alone"], -table[i]["cosine_alone"], layers[i].name)
            )
            final = judge.measure(model)
            for i in order:
                trial = fidelity_with(kept + [layers[i]])
                accepted = trial["loss"] <= options.budget
                trail.append({"tensor": layers[i].name, "loss": round(trial["loss"], 6), "accepted": accepted})
                if accepted:
                    kept.append(layers[i])
                    final = trial
                task.advance()
        stored = []
        for layer in kept:
            stored.append(
                onnxshrink.store_weight(
                    model,
                    layer.weight,
                    quantized[layer.name],
                    form="packed" if options.variant == "binary" else "smallest",
                )
            )
        chosen = {layer.name for layer in kept}
        for row in table:
            row["binarized"] = row["tensor"] in chosen
        return self._stats(options, judge, final, table, trail, stored, left, layers, context)

    @staticmethod
    def _quantize(layer: Layer, options: onnxshrink.Options) -> QuantizedTensor:
        array = layer.weight.array().astype(np.float32)
        if options.variant == "binary":
            return binarize(array, layer.axis)
        return ternarize(array, layer.axis, options.threshold)

    @staticmethod
    def _stats(options, judge, final, table, trail, stored, left, layers, context) -> dict[str, Any]:
        elements = sum(s.elements for s in stored)
        stored_bytes = sum(s.stored_bytes for s in stored)
        if stored:
            context.warn(
                f"{len(stored)} layer(s) {options.variant}-quantized; "
                f"fidelity loss on the calibration data {final['loss']:.4f} ({judge.metric}). {HONEST_NOTE}"
            )
        elif layers:
            context.warn(
                f"no layer could be {options.variant}-quantized within budget {options.budget} ({judge.metric}); "
                "the model is unchanged"
            )
        return {
            "variant": options.variant,
            "note": HONEST_NOTE,
            "metric": judge.metric,
            "budget": options.budget,
            "fidelity_loss": round(final["loss"], 6),
            "top1_agreement": None if final.get("agreement") is None else round(final["agreement"], 6),
            "output_cosine": round(final["cosine"], 6),
            "calibration_samples": judge.samples,
            "binarized_tensors": len(stored),
            "candidate_tensors": len(layers),
            "binarized_params": elements,
            "weight_bytes_float32": 4 * elements,
            "weight_bytes_stored": stored_bytes,
            "bits_per_weight": round(8 * stored_bytes / elements, 4) if elements else 0.0,
            "layers": table,
            "greedy_trail": trail,
            "stored": [s.describe() for s in stored],
            "left": left,
        }


class _Fidelity:
    """Fidelity of a model against the float model on fixed feeds: top-1 agreement and output cosine."""

    def __init__(self, model: onnx.ModelProto, feeds: list[dict], metric: str, context: onnxshrink.Context):
        self.feeds, self.context = feeds, context
        self.reference = [list(o.values()) for o in context.run(model, feeds)]
        first = np.asarray(self.reference[0][0])
        classes = first.ndim == 2 and first.shape[-1] >= 2
        if metric == "agreement" and not classes:
            raise onnxshrink.UsageError(
                "plugin 'binarize': metric=agreement needs a first output of shape (N, classes), "
                f"got {first.shape}; use metric=cosine"
            )
        self.metric = metric if metric != "auto" else ("agreement" if classes else "cosine")
        self.samples = sum(int(np.asarray(r[0]).shape[0]) for r in self.reference) if classes else len(feeds)

    def measure(self, model: onnx.ModelProto) -> dict[str, float]:
        outputs = [list(o.values()) for o in self.context.run(model, self.feeds)]
        cosine = output_cosine(self.reference, outputs)
        agreement = None
        if self.metric == "agreement":
            ref = np.concatenate([np.argmax(r[0], axis=-1) for r in self.reference])
            got = np.concatenate([np.argmax(o[0], axis=-1) for o in outputs])
            agreement = float(np.mean(ref == got))
        loss = 1.0 - (agreement if agreement is not None else cosine)
        return {"loss": max(loss, 0.0), "agreement": agreement, "cosine": cosine}


@onnxshrink.hookimpl
def register_methods(register):
    register(Binarize)
