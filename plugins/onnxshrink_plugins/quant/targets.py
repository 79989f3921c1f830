"""Which weights int_quant quantizes, along which axes, and which it leaves (with the reason)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import onnx

import onnxshrink
from onnxshrink import Use, WeightTensor, node_label, weight_axes

from ..shared.layers import WEIGHTED_OPS

# Recurrent ops: input weights W (1) and recurrence weights R (2); their biases stay float. No integer
# kernel runs them, so they always take the storage form (folded at load).
RECURRENT_OPS = ("LSTM", "GRU", "RNN")
# Einsum: any constant operand (scales along its first axis, blocks along its last); Reshape: a constant
# reshaped before use (quantized on a matrix view). Storage form only.
QUANTIZABLE_OPS = (*WEIGHTED_OPS, *RECURRENT_OPS, "Einsum", "Reshape")
DEFAULT_DOMAINS = ("", "ai.onnx")
_OP_INPUTS = {
    "Conv": (1,),
    "ConvTranspose": (1,),
    "Gemm": (0, 1),
    "MatMul": (0, 1),
    "LSTM": (1, 2),
    "GRU": (1, 2),
    "RNN": (1, 2),
    "Einsum": (0, 1, 2, 3),
    "Reshape": (0,),
}


@dataclass
class Target:
    """A float weight to quantize and the weight slots (``uses``) that will read the quantized form."""

    weight: WeightTensor
    uses: list[Use]
    channel_axis: int
    reduce_axis: int
    kept_uses: list[Use] = field(default_factory=list)  # excluded readers that keep the float tensor

    @property
    def layers(self) -> list[str]:
        return [node_label(u.node) for u in self.uses]

    @property
    def single_use(self) -> bool:
        return len(self.uses) == 1 and not self.kept_uses and not self.weight.other_uses


@dataclass
class Plan:
    targets: list[Target]
    left: list[dict]
    layers: dict[str, str]  # label → op type, for every weighted node that could be quantized


def plan_targets(
    model: onnx.ModelProto,
    *,
    op_types: Iterable[str] = WEIGHTED_OPS,
    embeddings: bool = False,
    exclude: Iterable[str] = (),
    keep_float: Iterable[str] = (),
    min_size: int = 0,
) -> Plan:
    """Find every float weight of the chosen ops; split it into targets and ``left`` entries with reasons.

    ``exclude`` entries match node names (or ``Op(output)`` labels), op types or weight names and are
    reported as excluded; ``keep_float`` (node labels chosen by the sensitivity search) likewise.
    """
    op_inputs = {op: _OP_INPUTS[op] for op in op_types}
    if embeddings:
        op_inputs.update(onnxshrink.EMBEDDING_INPUTS)
    excluded, kept = set(exclude), set(keep_float)
    targets: list[Target] = []
    left: list[dict] = []
    layers: dict[str, str] = {}
    for weight in onnxshrink.weight_tensors(model, op_inputs):
        reason = _skip_reason(weight, min_size)
        if reason is None:
            reason = _custom_domain_reader(weight)
        labels = [node_label(u.node) for u in weight.weight_uses]
        if reason:
            left.append(_left(weight, reason, labels))
            continue
        uses, kept_uses = [], []
        for use, label in zip(weight.weight_uses, labels):
            layers[label] = use.node.op_type
            if label in excluded or use.node.op_type in excluded or weight.name in excluded or label in kept:
                kept_uses.append(use)
            else:
                uses.append(use)
        if not uses:
            why = (
                "kept float by the sensitivity search"
                if all(node_label(u.node) in kept for u in kept_uses)
                else "excluded (exclude=)"
            )
            left.append(_left(weight, why, labels))
            continue
        channel_axis, reduce_axis = weight_axes(uses[0], len(weight.shape))
        targets.append(Target(weight, uses, channel_axis, reduce_axis, kept_uses))
    left.extend(_custom_domain_nodes(model, min_size))
    return Plan(targets, left, layers)


def _left(weight: WeightTensor, reason: str, labels: list[str]) -> dict:
    return {"tensor": weight.name, "layers": labels, "shape": list(weight.shape), "reason": reason}


def _skip_reason(weight: WeightTensor, min_size: int) -> str | None:
    if weight.source == "overridable":
        return "also a graph input: a caller may feed another value, so it stays a float input"
    if len(weight.shape) < 2:
        return "1-D tensor (bias-like)"
    if weight.size < min_size:
        return f"{weight.size} elements < min_size {min_size}"
    if not _all_finite(weight.array()):
        return "holds NaN or Inf"
    return None


def _all_finite(array: np.ndarray) -> bool:
    """No NaN or Inf; for plain floats from the extremes (min and max propagate NaN), with no mask array."""
    if array.size and array.dtype in (np.float16, np.float32, np.float64):
        return bool(np.isfinite(array.min()) and np.isfinite(array.max()))
    return bool(np.all(np.isfinite(array)))


def _custom_domain_reader(weight: WeightTensor) -> str | None:
    for use in weight.other_uses:
        if use.node.domain not in DEFAULT_DOMAINS:
            return (
                f"also read by custom-domain op {use.node.domain}::{use.node.op_type} {node_label(use.node)!r}, "
                "which must see the original values"
            )
    return None


def _custom_domain_nodes(model: onnx.ModelProto, min_size: int) -> list[dict]:
    """Custom-domain nodes that read float constants: left as they are, and said so."""
    out = []
    for g, _ in onnxshrink.iter_graphs(model.graph):
        constants = {t.name: t for t in g.initializer if t.data_type in onnxshrink.FLOAT_TYPES}
        for node in g.node:
            if node.domain in DEFAULT_DOMAINS:
                continue
            weights = [
                n
                for n in node.input
                if n in constants and len(constants[n].dims) >= 2 and math.prod(constants[n].dims) >= min_size
            ]
            if weights:
                out.append(
                    {
                        "node": node_label(node),
                        "tensors": weights,
                        "reason": (
                            f"custom-domain op {node.domain}::{node.op_type}: "
                            "int_quant does not know its semantics, so its weights stay float"
                        ),
                    }
                )
    return out
