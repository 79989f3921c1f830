"""fp16_storage: store float32 weights as float16 behind a Cast that onnxruntime folds at load.

An example onnxshrink plugin, walked through in onnxshrink's docs/plugin-authors.md.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import onnxshrink
from onnxshrink import DEFAULT_WEIGHT_INPUTS, EMBEDDING_INPUTS, Method, Option

__version__ = "0.1.0"

FLOAT16_MAX = float(np.finfo(np.float16).max)  # 65504
WEIGHT_INPUTS = {**DEFAULT_WEIGHT_INPUTS, **EMBEDDING_INPUTS}


class Fp16Storage(Method):
    """Store float32 weights as float16 in the file; a Cast restores float32 when the model loads.

    Each weight of Conv, ConvTranspose, Gemm and MatMul (and each Gather embedding table) becomes a
    float16 initializer followed by ``Cast(to=FLOAT)``: the file loses about half of its weight bytes.
    onnxruntime folds the Cast when it creates the session (with its default graph optimizations), so
    the session holds the same float32 ops and weights as the float model, rounded to float16: run
    time and run-time memory are the float model's; only the file shrinks. The rounding's relative
    error ||w16 - w|| / ||w|| is about 2e-4 per tensor. A tensor whose error would exceed
    ``max_error`` (values near or below float16's smallest normal number, 6.1e-5), that holds values
    beyond float16's range (65504), that is a graph input, already 16-bit or double, listed in
    ``keep`` or under ``min_size`` elements stays float32, and the stats list it with the reason.
    Weights in Constant nodes, shared by several nodes and inside If/Loop branches are converted
    where they are defined.
    """

    name = "fp16_storage"
    kind = "transform"
    options = (
        Option("min_size", int, 64, "Leave tensors with fewer elements float32 (the Cast costs more than it saves).", min=0),
        Option("max_error", float, 1e-3, "Largest relative error ||w16 - w|| / ||w|| a tensor may take; above it, it stays float32.", min=0.0),
        Option("keep", list, None, "Weight names to leave float32, e.g. [head.weight,embed]."),
    )

    def apply(self, model: onnx.ModelProto, options: dict[str, Any], context: onnxshrink.Context) -> dict[str, Any]:
        keep = set(options["keep"] or [])
        taken = onnxshrink.all_names(model)
        converted, skipped = [], []
        for weight in onnxshrink.weight_tensors(model, WEIGHT_INPUTS):
            values = weight.array()
            reason = _skip_reason(weight, values, options, keep)
            halved = None if reason else values.astype(np.float16)
            error = 0.0 if reason else _relative_error(values, halved)
            if error > options["max_error"]:
                reason = f"relative error {error:.3g} > max_error {options['max_error']}"
            if reason:
                skipped.append({"name": weight.name, "reason": reason})
                continue
            stored = numpy_helper.from_array(halved, onnxshrink.unique_name(taken, f"{weight.name}_fp16"))
            cast = helper.make_node(
                "Cast", [stored.name], [weight.name], name=onnxshrink.unique_name(taken, f"{weight.name}_to_float"), to=TensorProto.FLOAT
            )
            onnxshrink.replace_weight(model, weight, [cast], [stored])
            converted.append(
                {
                    "name": weight.name,
                    "shape": list(weight.shape),
                    "source": weight.source,
                    "in_subgraph": weight.in_subgraph,
                    "relative_error": error,
                }
            )
        if not converted:
            why = "; ".join(f"{s['name']}: {s['reason']}" for s in skipped) or "no Conv, Gemm, MatMul or Gather weight found"
            context.warn(f"no weight was converted, the model is unchanged ({why})")
        params = sum(int(np.prod(t["shape"], dtype=np.int64)) for t in converted)
        return {
            "converted_tensors": len(converted),
            "converted_params": params,
            "weight_bytes_before": 4 * params,
            "weight_bytes_after": 2 * params,
            "max_relative_error": max((t["relative_error"] for t in converted), default=0.0),
            "tensors": converted,
            "skipped": skipped,
        }


def _skip_reason(weight: onnxshrink.WeightTensor, values: np.ndarray, options: dict[str, Any], keep: set[str]) -> str | None:
    if weight.name in keep:
        return "listed in keep"
    if weight.source == "overridable":
        return "graph input (a caller may feed another value)"
    if weight.dtype != TensorProto.FLOAT:
        return f"stored as {TensorProto.DataType.Name(weight.dtype).lower()}, not float32"
    if weight.size < options["min_size"]:
        return f"{weight.size} elements < min_size {options['min_size']}"
    finite = values[np.isfinite(values)]
    if finite.size != values.size or (finite.size and np.abs(finite).max() > FLOAT16_MAX):
        return "values beyond float16's range (|w| > 65504, inf or nan)"
    return None


def _relative_error(values: np.ndarray, halved: np.ndarray) -> float:
    norm = float(np.linalg.norm(values.astype(np.float64)))
    if norm == 0.0:
        return 0.0
    return round(float(np.linalg.norm(halved.astype(np.float64) - values)) / norm, 8)


@onnxshrink.hookimpl
def register_methods(register):
    register(Fp16Storage)
