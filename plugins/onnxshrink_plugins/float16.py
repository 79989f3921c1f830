"""float16: store every float32 constant as float16 with a Cast back to float32 (folded at load)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import onnx

import onnxshrink
from onnxshrink import Method, Option

from .shared.float16 import beyond_float16, store_float16
from .shared.input_weights import INPUT_WEIGHTS_OPTION, FreedInputs

# Cast from float16 to float32 takes its integer ``to`` attribute from opset 6 on.
MIN_OPSET = 6
BEYOND_RANGE = "values beyond float16's range"


class Float16(Method):
    """Halve the bytes of every float32 constant: stored as float16, cast back to float32 at load.

    Every float32 initializer and Constant-node value (main graph and If/Loop/Scan subgraphs) with at
    least ``min_size`` elements becomes a float16 tensor plus one Cast(to=FLOAT) that feeds all its
    readers. onnxruntime folds the Cast when it creates the session, so the model still computes in
    float32 (same kernels, same latency) from values rounded to float16 (relative error at most 2^-11;
    values under float16's smallest subnormal become 0). Left float32, with the reason in ``left``:
    tensors with values beyond float16's range (|x| > 65504), initializers that are also graph inputs
    (unless ``input_weights`` makes them constants, as it does by default when every initializer is one),
    tensors under ``min_size`` elements, tensors named in ``exclude`` or read by an excluded node, and
    every tensor of a model that is already quantized. Tensors of other float types stay as they are.
    """

    name = "float16"
    kind = "quantize"
    options = (
        Option("min_size", int, 16, "Leave float32 tensors with fewer elements as they are.", min=0),
        Option("exclude", list, None, "Node names, op types or tensor names whose tensors stay float32."),
        INPUT_WEIGHTS_OPTION,
    )
    # Searched by `onnxshrink tune`: small tables (lookup values, windows) are the ones float16 can hurt
    # (zoo swift_f0: a 95-value table takes the worst cosine to 0.587 at min_size=16, 0.997 at 128).
    search_space = (onnxshrink.Tunable("min_size", choices=(16, 128, 1024)),)

    @classmethod
    def not_applicable(cls, model: onnx.ModelProto) -> str | None:
        markers = onnxshrink.quantization_markers(model)
        return f"the model is already quantized ({markers[0]})" if markers else None

    def apply(self, model: onnx.ModelProto, options: onnxshrink.Options, context: onnxshrink.Context) -> dict[str, Any]:
        self.check_exclude(model, options.exclude)
        excluded = set(options.exclude or ())
        stats: dict[str, Any] = {
            "converted_tensors": 0,
            "left_tensors": 0,
            "left_reasons": {},
            "bytes_before": 0,
            "bytes_after": 0,
            "max_abs_error": 0.0,
            "flushed_to_zero": 0,
            "tensors": [],
            "left": [],
        }
        markers = onnxshrink.quantization_markers(model)
        if markers:
            context.warn(
                f"the model is already quantized ({markers[0]}{' and more' if len(markers) > 1 else ''}); "
                "left unchanged"
            )
            return {**stats, "already_quantized": markers[:50]}
        if onnxshrink.model_opset(model) < MIN_OPSET:
            context.warn(
                f"opset {onnxshrink.model_opset(model)} < {MIN_OPSET}: Cast to float cannot be written; left unchanged"
            )
            return stats
        freed = FreedInputs(model, options.input_weights)
        freed.log(context)
        taken = onnxshrink.all_names(model)
        converted, left = stats["tensors"], stats["left"]
        for weight in onnxshrink.weight_tensors(model, _every_input(model)):
            reason = _reason(weight, options.min_size, excluded)
            array = None if reason else weight.array()
            if not reason and beyond_float16(array):
                reason = BEYOND_RANGE
            if reason:
                left.append({"tensor": weight.name, "shape": list(weight.shape), "reason": reason})
                continue
            stored = store_float16(model, weight, taken, array=array)
            converted.append(
                {
                    "tensor": weight.name,
                    "shape": list(weight.shape),
                    "source": weight.source,
                    "in_subgraph": weight.in_subgraph,
                    "readers": len(weight.uses),
                    "bytes_before": weight.size * 4,
                    "bytes_after": onnxshrink.tensor_bytes(stored.tensor),
                    "max_abs_error": stored.max_abs_error,
                }
            )
            stats["flushed_to_zero"] += stored.flushed_to_zero
        stats["converted_tensors"] = len(converted)
        stats["left_tensors"] = len(left)
        stats["left_reasons"] = dict(sorted(Counter(e["reason"] for e in left).items()))
        stats["bytes_before"] = sum(t["bytes_before"] for t in converted)
        stats["bytes_after"] = sum(t["bytes_after"] for t in converted)
        stats["max_abs_error"] = max((t["max_abs_error"] for t in converted), default=0.0)
        beyond = stats["left_reasons"].get(BEYOND_RANGE, 0)
        if beyond:
            context.warn(f"{beyond} tensor(s) hold values beyond float16's range (|x| > 65504) and stay float32")
        if not converted:
            freed.restore()
            context.warn("no tensor was stored as float16; the model is unchanged (see 'left' for why)")
        elif freed.count:
            stats["input_weights_made_constant"] = freed.count
        return stats


def _every_input(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    """Every input slot of every op type in the model (subgraphs included): all constants are candidates."""
    widest: dict[str, int] = {}
    for g, _ in onnxshrink.iter_graphs(model.graph):
        for node in g.node:
            widest[node.op_type] = max(widest.get(node.op_type, 0), len(node.input))
    return {op: tuple(range(count)) for op, count in sorted(widest.items())}


def _reason(weight: onnxshrink.WeightTensor, min_size: int, excluded: set[str]) -> str:
    """Why ``weight`` stays as it is (values aside), or ''."""
    if weight.dtype != onnx.TensorProto.FLOAT:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(weight.dtype).name
        return f"already {dtype}, not float32"
    if weight.source == "overridable":
        return "also a graph input: a caller may feed another value"
    if weight.size < min_size:
        return f"fewer than min_size ({min_size}) elements"
    readers = {onnxshrink.node_label(u.node) for u in weight.uses} | {u.node.op_type for u in weight.uses}
    if weight.name in excluded or readers & excluded:
        return "excluded (exclude=)"
    return ""


@onnxshrink.hookimpl
def register_methods(register):
    register(Float16)
