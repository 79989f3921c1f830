"""Accuracy recovery after channel removal, without training.

``mean``: the removed channels' mean contribution (over the calibration data) is folded into the
consumer's bias; exact for channels that were constant (dead ReLUs, channels stuck at their bias).
``lstsq``: each consumer's weights and bias are refitted by (ridge) least squares so that, on the
pruned model's own inputs, it reproduces the original model's output (the channel-pruning
reconstruction of He et al., 2017). Consumers are refitted in graph order, so each one also absorbs
the error left by the refits before it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
from onnx import helper

from onnxshrink.ir.walk import all_names, node_label, unique_name
from onnxshrink.ir.walk import node_attribute as attr
from onnxshrink.toolkit.channels.constants import Constants
from onnxshrink.toolkit.channels.removal import ChannelRemoval, SinkChange
from onnxshrink.toolkit.index import GraphIndex, producer
from onnxshrink.toolkit.runtime import intermediate_values

METHODS = ("mean", "lstsq")


def reconstruct_consumers(
    original: onnx.ModelProto,
    pruned: onnx.ModelProto,
    removal: ChannelRemoval,
    feeds: Sequence[dict[str, np.ndarray]],
    *,
    method: str = "lstsq",
    max_rows: int = 16384,
    ridge: float = 1e-4,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Repair the consumers listed in ``removal`` in ``pruned`` (edited in place), using ``original``
    (the model before :func:`remove_channels`) and calibration ``feeds``. Returns one entry per
    consumer: what was done, the relative squared error of its output before and after (``lstsq``),
    or why it was skipped."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, not {method!r}")
    if not feeds:
        raise ValueError("reconstruction needs calibration data")
    names = sorted({s.tensor for s in removal.sinks} | {s.node for s in removal.sinks})
    reference = {name: _stack(values) for name, values in intermediate_values(original, names, feeds).items()}
    before = Constants(original)
    rng = np.random.default_rng(seed)
    originals = GraphIndex(original.graph)
    results = []
    for sink in removal.sinks:
        node = producer(pruned.graph, sink.node)  # the pruned graph changes as sinks are repaired
        original_node = originals.producer(sink.node)
        entry: dict[str, Any] = {"node": node_label(original_node)}
        problem = _unsupported(node, sink, method)
        if problem:
            entry["skipped"] = problem
            results.append(entry)
            continue
        layer = _Layer(pruned, node, removal.kept_outputs.get(sink.node))
        if method == "lstsq" and node.op_type == "Conv" and layer.weight.ndim != 4:
            results.append({**entry, "skipped": "only 2-D Conv consumers are refitted by least squares"})
            continue
        if method == "mean":
            shift = _mean_contribution(before, original_node, sink, reference[sink.tensor], layer.kept_outputs)
            layer.write(layer.weight_matrix(), layer.intercept() + shift)
            entry.update(method="mean", bias_shift=round(float(np.linalg.norm(shift)), 6))
        else:
            inputs = _stack(intermediate_values(pruned, [sink.tensor], feeds)[sink.tensor])
            x, y = layer.rows(inputs, reference[sink.node], max_rows, rng)
            w_now, b_now = layer.weight_matrix(), layer.intercept()
            error_now = _relative_error(x @ w_now + b_now, y)
            w_fit, b_fit = _ridge(x, y, ridge)
            error_fit = _relative_error(x @ w_fit + b_fit, y)
            if error_fit < error_now:
                layer.write(w_fit, b_fit)
            entry.update(
                method="lstsq",
                rows=int(x.shape[0]),
                error_before=round(error_now, 6),
                error_after=round(min(error_fit, error_now), 6),
            )
        results.append(entry)
    return results


def _stack(values: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([np.asarray(v) for v in values], axis=0)


def _unsupported(node: onnx.NodeProto, sink: SinkChange, method: str) -> str | None:
    if sink.grouped:
        return "grouped Conv consumers are not refitted"
    if node.op_type == "ConvTranspose":
        return "ConvTranspose consumers are not refitted"
    if node.op_type == "Gemm" and (attr(node, "alpha", 1.0) == 0 or attr(node, "beta", 1.0) == 0):
        return "Gemm with alpha or beta 0"
    return None


def _ridge(x: np.ndarray, y: np.ndarray, ridge: float) -> tuple[np.ndarray, np.ndarray]:
    """Least squares with an intercept and a small ridge on the weights: (W, b) with y ≈ x W + b."""
    mean_x, mean_y = x.mean(axis=0), y.mean(axis=0)
    xc, yc = x - mean_x, y - mean_y
    gram = xc.T @ xc
    lam = ridge * max(np.trace(gram) / max(gram.shape[0], 1), 1e-12)
    weights = np.linalg.solve(gram + lam * np.eye(gram.shape[0]), xc.T @ yc)
    return weights, mean_y - mean_x @ weights


def _relative_error(prediction: np.ndarray, target: np.ndarray) -> float:
    return float(np.sum((prediction - target) ** 2) / max(np.sum(target**2), 1e-30))


def _mean_contribution(
    before: Constants, node: onnx.NodeProto, sink: SinkChange, inputs: np.ndarray, kept_outputs: np.ndarray | None
) -> np.ndarray:
    """What the removed input positions added to the consumer's output on average, per output channel."""
    removed = sink.removed
    axes = tuple(a for a in range(inputs.ndim) if a != sink.axis)
    means = inputs.astype(np.float64).mean(axis=axes)[removed]
    weight = before.get(node.input[1]).astype(np.float64)
    if node.op_type == "Conv":
        taken = weight[:, removed]
        shift = taken.reshape(taken.shape[0], len(removed), -1).sum(axis=2) @ means
    elif node.op_type == "Gemm":
        matrix = weight.T if attr(node, "transB", 0) else weight
        shift = means @ matrix[removed] * attr(node, "alpha", 1.0)
    else:
        shift = means @ weight[removed]
    return shift if kept_outputs is None else shift[kept_outputs]


class _Layer:
    """A consumer as a linear map on rows: output ≈ rows @ W + b, and how to write W and b back."""

    def __init__(self, model: onnx.ModelProto, node: onnx.NodeProto, kept_outputs: np.ndarray | None):
        self.model, self.node, self.kept_outputs = model, node, kept_outputs
        self.constants = Constants(model)
        self.weight = self.constants.get(node.input[1])

    def weight_matrix(self) -> np.ndarray:
        w = self.weight.astype(np.float64)
        if self.node.op_type == "Conv":
            return w.reshape(w.shape[0], -1).T
        if self.node.op_type == "Gemm":
            return (w.T if attr(self.node, "transB", 0) else w) * attr(self.node, "alpha", 1.0)
        return w

    def intercept(self) -> np.ndarray:
        """The bias inside the consumer's output (Conv B, Gemm beta·C); MatMul: 0, its bias comes after."""
        n = self.weight_matrix().shape[1]
        node = self.node
        if node.op_type in ("Conv", "Gemm") and len(node.input) > 2 and node.input[2]:
            bias = self.constants.get(node.input[2]).astype(np.float64)
            scale = attr(node, "beta", 1.0) if node.op_type == "Gemm" else 1.0
            return np.broadcast_to(bias.reshape(-1) * scale, (n,)).copy()
        return np.zeros(n)

    def rows(
        self, inputs: np.ndarray, outputs: np.ndarray, max_rows: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """Input rows and target outputs (the original's, kept output channels), at most ``max_rows``."""
        keep = self.kept_outputs
        if self.node.op_type == "Conv":
            return self._conv_rows(inputs, outputs, max_rows, rng)
        x = inputs.reshape(-1, inputs.shape[-1]).astype(np.float64)
        y = outputs.reshape(-1, outputs.shape[-1]).astype(np.float64)
        if keep is not None:
            y = y[:, keep]
        if len(x) > max_rows:
            pick = np.sort(rng.choice(len(x), max_rows, replace=False))
            x, y = x[pick], y[pick]
        return x, y

    def _conv_rows(self, inputs, outputs, max_rows, rng):
        node, w = self.node, self.weight
        kh, kw = w.shape[2:]
        sh, sw = attr(node, "strides", [1, 1])
        dh, dw = attr(node, "dilations", [1, 1])
        n, _, h, width = inputs.shape
        _, _, ho, wo = outputs.shape
        top, left, bottom, right = _conv_pads(node, (h, width), (kh, kw), (sh, sw), (dh, dw))
        padded = np.pad(inputs, ((0, 0), (0, 0), (top, bottom), (left, right)))
        total = n * ho * wo
        flat = np.arange(total) if total <= max_rows else np.sort(rng.choice(total, max_rows, replace=False))
        b, i, j = np.unravel_index(flat, (n, ho, wo))
        rows_h = i[:, None] * sh + np.arange(kh) * dh
        rows_w = j[:, None] * sw + np.arange(kw) * dw
        channels = np.arange(inputs.shape[1])
        patches = padded[
            b[:, None, None, None], channels[None, :, None, None], rows_h[:, None, :, None], rows_w[:, None, None, :]
        ]
        y = outputs[b, :, i, j]
        if self.kept_outputs is not None:
            y = y[:, self.kept_outputs]
        return patches.reshape(len(flat), -1).astype(np.float64), y.astype(np.float64)

    def write(self, matrix: np.ndarray, intercept: np.ndarray) -> None:
        node, constants = self.node, self.constants
        if node.op_type == "Conv":
            constants.write(node, 1, matrix.T.reshape(self.weight.shape))
            self._set_bias(intercept, 2, self.weight.dtype)
        elif node.op_type == "Gemm":
            matrix = matrix / attr(node, "alpha", 1.0)
            constants.write(node, 1, matrix.T if attr(node, "transB", 0) else matrix)
            self._set_bias(intercept / attr(node, "beta", 1.0), 2, self.weight.dtype)
        else:
            constants.write(node, 1, matrix)
            if np.any(intercept):
                self._shift_following_bias(intercept)

    def _set_bias(self, bias: np.ndarray, slot: int, dtype) -> None:
        node = self.node
        if len(node.input) > slot and node.input[slot]:
            current = self.constants.get(node.input[slot])
            shape = current.shape if current.size == bias.size else bias.shape
            self.constants.write(node, slot, bias.reshape(shape))
        elif np.any(bias):
            while len(node.input) < slot:
                node.input.append("")
            node.input.append(self.constants.add(f"{node.output[0]}_bias", bias.astype(dtype)))

    def _shift_following_bias(self, shift: np.ndarray) -> None:
        """MatMul: add ``shift`` to the bias Add that follows it, or insert one."""
        graph, node = self.model.graph, self.node
        out = node.output[0]
        readers = [n for n in graph.node if out in n.input]
        if len(readers) == 1 and readers[0].op_type == "Add" and not any(o.name == out for o in graph.output):
            add = readers[0]
            slot = 1 - list(add.input).index(out)
            bias = self.constants.get(add.input[slot])
            if bias is not None and bias.size == shift.size and bias.shape[-1] == shift.size:
                self.constants.write(add, slot, bias + shift.reshape(bias.shape))
                return
        taken = all_names(self.model)
        inner = unique_name(taken, f"{out}_unbiased")
        node.output[0] = inner
        bias_name = self.constants.add(f"{out}_bias", shift.astype(self.weight.dtype))
        position = next(k for k, n in enumerate(graph.node) if n is node or n.output[0] == inner)
        graph.node.insert(
            position + 1,
            helper.make_node("Add", [inner, bias_name], [out], name=unique_name(taken, f"{node.name or out}_bias")),
        )


def _conv_pads(node: onnx.NodeProto, size, kernel, strides, dilations) -> tuple[int, int, int, int]:
    auto_pad = attr(node, "auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        begins, ends = [], []
        for n, k, s, d in zip(size, kernel, strides, dilations):
            total = max((-(-n // s) - 1) * s + (k - 1) * d + 1 - n, 0)
            small = total // 2
            begins.append(small if auto_pad == "SAME_UPPER" else total - small)
            ends.append(total - begins[-1])
        return begins[0], begins[1], ends[0], ends[1]
    if auto_pad == "VALID":
        return 0, 0, 0, 0
    pads = attr(node, "pads", [0, 0, 0, 0])
    return pads[0], pads[1], pads[2], pads[3]
