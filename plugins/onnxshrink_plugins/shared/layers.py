"""Which weights gptq, binarize and sparse_store work on, and how each weighted op reads its weight.

A :class:`Layer` is one weight tensor (read by one or more Conv, ConvTranspose, Gemm or MatMul
nodes) with its output-channel axis. A :class:`LinearView` sees a Conv, Gemm or MatMul weight as
the (out, in) matrix of a linear map, and turns that node's activation input into the rows of
inputs that map reads (im2col for Conv), which is what GPTQ's Hessian is built from.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import onnx

import onnxshrink
from onnxshrink import QuantizedTensor, Use, WeightTensor, node_label, weight_axes

# The ops whose weight input the methods quantize, binarize or prune as a layer (the one home of this list).
WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
# Weights no linear view reads (embedding tables, recurrent W and R, Einsum operands): rounded to
# nearest in groups along their reduction axis and stored packed, folded at load.
TABLE_INPUTS = {"Gather": (0,), "LSTM": (1, 2), "GRU": (1, 2), "RNN": (1, 2), "Einsum": (0, 1, 2, 3), "Reshape": (0,)}
# Ops whose operand axes say nothing about channels: quantized on a matrix view (see matrix_view).
RESHAPED_OPS = ("Reshape",)


def matrix_view(shape: tuple[int, ...], row: int = 32) -> tuple[int, int]:
    """(rows, k): a 2-D view of a tensor whose rows are its smallest trailing block of ≥ ``row``
    elements (the whole tensor when none is), for weights whose reader gives no channel axis, such
    as a constant reshaped before a MatMul: one scale per row, blocks along it."""
    size = int(np.prod(shape, dtype=np.int64)) if shape else 1
    k = 1
    for dim in reversed(shape):
        k *= dim
        if k >= row:
            break
    return size // max(k, 1), k


WEIGHT_INPUTS = {**onnxshrink.DEFAULT_WEIGHT_INPUTS, **TABLE_INPUTS}
_DEFAULT_DOMAINS = ("", "ai.onnx")


def _ints(node: onnx.NodeProto) -> dict[str, int]:
    return {a.name: a.i for a in node.attribute if a.type == onnx.AttributeProto.INT}


@dataclass
class Layer:
    weight: WeightTensor
    uses: list[Use]
    axis: int  # output-channel axis of the stored weight
    labels: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.weight.name

    @property
    def op_type(self) -> str:
        return self.uses[0].node.op_type

    def describe(self) -> dict:
        return {"tensor": self.name, "layers": self.labels, "op_type": self.op_type, "shape": list(self.weight.shape)}


def find_layers(
    model: onnx.ModelProto,
    *,
    op_types: Iterable[str] = WEIGHTED_OPS,
    exclude: Iterable[str] = (),
    min_size: int = 0,
) -> tuple[list[Layer], list[dict]]:
    """(layers, left): every float weight of ``op_types`` that can be replaced, and the rest with reasons.

    ``exclude`` entries match node names (or ``Op(output)`` labels), op types or weight names.
    """
    op_inputs = {op: WEIGHT_INPUTS[op] for op in op_types}
    excluded = set(exclude)
    layers, left = [], []
    for weight in onnxshrink.weight_tensors(model, op_inputs):
        labels = [node_label(u.node) for u in weight.weight_uses]
        reason = _skip_reason(weight, min_size)
        if reason is None and (
            weight.name in excluded
            or any(lab in excluded for lab in labels)
            or any(u.node.op_type in excluded for u in weight.weight_uses)
        ):
            reason = "excluded (exclude=)"
        axes = {weight_axes(u, len(weight.shape))[0] for u in weight.weight_uses}
        if reason is None and len(axes) > 1:
            reason = "shared by nodes that read it with different output-channel axes"
        if reason:
            left.append({"tensor": weight.name, "layers": labels, "shape": list(weight.shape), "reason": reason})
            continue
        layers.append(Layer(weight, list(weight.weight_uses), axes.pop(), labels))
    return layers, left


def _skip_reason(weight: WeightTensor, min_size: int) -> str | None:
    if weight.source == "overridable":
        return "also a graph input: a caller may feed another value"
    if len(weight.shape) < 2:
        return "1-D tensor (bias-like)"
    if weight.size < min_size:
        return f"{weight.size} elements < min_size {min_size}"
    values_read = [u for u in weight.other_uses if u.node.op_type not in ("Shape", "Size")]  # those read dims only
    if values_read:
        use = values_read[0]
        return f"also read by {use.node.op_type} {node_label(use.node)!r} as a non-weight input"
    if any(u.node.domain not in _DEFAULT_DOMAINS for u in weight.uses):
        return "read by a custom-domain op"
    if not np.all(np.isfinite(weight.array())):
        return "holds NaN or Inf"
    return None


def output_cosine(reference: list[list[np.ndarray]], candidate: list[list[np.ndarray]]) -> float:
    """Lowest cosine similarity between matching outputs, all feeds flattened together (0 for NaN/Inf)."""
    scores = []
    for index in range(len(reference[0]) if reference else 0):
        a = np.concatenate([np.asarray(r[index], np.float64).ravel() for r in reference])
        b = np.concatenate([np.asarray(c[index], np.float64).ravel() for c in candidate])
        if not np.all(np.isfinite(b)):
            scores.append(0.0)
            continue
        norm = np.linalg.norm(a) * np.linalg.norm(b)
        scores.append(float(a @ b / norm) if norm else float(np.array_equal(a, b)))
    return min(scores) if scores else 1.0


def first_and_last(model: onnx.ModelProto, layers: list[Layer]) -> set[str]:
    """Names of the weights read by the first and the last weighted node of the main graph."""
    order = {id(node): i for i, node in enumerate(model.graph.node)}
    ranked = [(order[id(u.node)], layer.name) for layer in layers for u in layer.uses if id(u.node) in order]
    if not ranked:
        return set()
    return {min(ranked)[1], max(ranked)[1]}


# -------------------------------------------------------------------------------------- linear views


@dataclass
class LinearView:
    """How one node reads its weight as ``y = x @ W_oi.T`` (per output row), for GPTQ.

    ``kind`` is ``matmul`` (weight input 1, (K, N)), ``gemm`` (weight B, (K, N) or (N, K) with
    transB) or ``conv`` (2-D or 1-D, group 1). ``activation`` names the tensor holding x.
    """

    kind: str
    node: onnx.NodeProto
    activation: str
    shape: tuple[int, ...]
    transposed: bool = False  # weight stored as (in, out)
    conv: dict = field(default_factory=dict)
    scale: float = 1.0  # Gemm alpha

    def matrix(self, array: np.ndarray) -> np.ndarray:
        """The weight as (out, in)."""
        if self.kind == "conv":
            return array.reshape(array.shape[0], -1)
        return array.T if self.transposed else array

    def stored(self, qt: QuantizedTensor) -> tuple[QuantizedTensor, tuple[int, ...]]:
        """``qt`` (laid out as (out, in)) in the weight's own layout, and the shape to reshape it to."""
        if not self.transposed:
            return qt, self.shape
        axis = None if qt.axis is None else 1 - qt.axis
        scale = qt.scale.T if qt.scale.ndim == 2 else qt.scale
        zp = None if qt.zero_point is None else (qt.zero_point.T if qt.zero_point.ndim == 2 else qt.zero_point)
        return QuantizedTensor(
            qt.values.T.copy(),
            np.ascontiguousarray(scale),
            None if zp is None else np.ascontiguousarray(zp),
            qt.bits,
            axis,
            qt.block_size,
        ), self.shape

    def rows(self, x: np.ndarray) -> np.ndarray:
        """The inputs of the linear map as rows (n, in), float32."""
        x = np.asarray(x, dtype=np.float32)
        if self.kind == "matmul":
            return x.reshape(-1, x.shape[-1])
        if self.kind == "gemm":
            return x.T if _ints(self.node).get("transA", 0) else x
        return im2col(x, **self.conv)


def linear_view(use: Use, shape: tuple[int, ...]) -> tuple[LinearView | None, str | None]:
    """(view, None) when GPTQ can read ``use``'s weight as a linear map, else (None, reason)."""
    node, index = use.node, use.index
    attrs = _ints(node)
    if node.op_type == "MatMul":
        if index != 1 or len(shape) != 2:
            return None, "MatMul weight that is not a 2-D right-hand input"
        return LinearView("matmul", node, node.input[0], shape, transposed=True), None
    if node.op_type == "Gemm":
        if index != 1:
            return None, "Gemm weight on input A"
        alpha = next((a.f for a in node.attribute if a.name == "alpha"), 1.0)
        return LinearView("gemm", node, node.input[0], shape, transposed=not attrs.get("transB", 0), scale=alpha), None
    if node.op_type == "Conv":
        if attrs.get("group", 1) != 1:
            return None, "grouped Conv"
        spatial = len(shape) - 2
        if spatial not in (1, 2):
            return None, f"{spatial}-D Conv"
        conv = _conv_geometry(node, shape[2:])
        if conv is None:
            return None, "Conv with auto_pad SAME (its padding depends on the input size)"
        return LinearView("conv", node, node.input[0], shape, conv=conv), None
    return None, f"{node.op_type} is not supported by GPTQ"


def _conv_geometry(node: onnx.NodeProto, kernel: tuple[int, ...]) -> dict | None:
    ints = {a.name: list(a.ints) for a in node.attribute if a.type == onnx.AttributeProto.INTS}
    auto_pad = next((a.s.decode() for a in node.attribute if a.name == "auto_pad"), "NOTSET")
    if auto_pad not in ("NOTSET", "VALID"):
        return None
    n = len(kernel)
    pads = ints.get("pads", [0] * 2 * n) if auto_pad == "NOTSET" else [0] * 2 * n
    return {
        "kernel": tuple(kernel),
        "strides": tuple(ints.get("strides", [1] * n)),
        "dilations": tuple(ints.get("dilations", [1] * n)),
        "pads": tuple(pads),
    }


def im2col(x: np.ndarray, kernel, strides, dilations, pads) -> np.ndarray:
    """Patches of an NC(H)W input as rows (N * positions, C * prod(kernel)), in the weight's order."""
    if len(kernel) == 1:  # 1-D: a 2-D convolution over a height of 1
        return im2col(x[:, :, None, :], (1, kernel[0]), (1, strides[0]), (1, dilations[0]), (0, pads[0], 0, pads[1]))
    (kh, kw), (sh, sw), (dh, dw) = kernel, strides, dilations
    top, left, bottom, right = pads
    padded = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    span_h, span_w = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    windows = np.lib.stride_tricks.sliding_window_view(padded, (span_h, span_w), axis=(2, 3))
    windows = windows[:, :, ::sh, ::sw, ::dh, ::dw]  # (N, C, OH, OW, kh, kw)
    n, c, oh, ow = windows.shape[:4]
    return windows.transpose(0, 2, 3, 1, 4, 5).reshape(n * oh * ow, c * kh * kw)
