"""weight_prune: magnitude pruning (unstructured) of Conv, ConvTranspose, Gemm and MatMul weights."""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np
import onnx

import onnxshrink
from onnxshrink import DEFAULT_WEIGHT_INPUTS, EMBEDDING_INPUTS, Method, Option


class WeightPrune(Method):
    """Zero the smallest-magnitude weights (unstructured magnitude pruning).

    Picks the weights of Conv, ConvTranspose, Gemm and MatMul (and Gather embedding tables with
    ``embeddings=true``) wherever they are stored: initializers, Constant nodes, shared tensors and
    subgraphs. Biases, normalization parameters, 1-D tensors and tensors under ``min_size`` elements are
    left alone. Zeros do not make onnxruntime faster or the .onnx file smaller; they shrink the
    compressed size (the stats report it) and pair with sparse storage.
    """

    name = "weight_prune"
    kind = "prune"
    options = (
        Option("sparsity", float, 0.5, "Fraction of weights to set to zero (per tensor or global, see scope).", min=0.0, max=1.0),
        Option("threshold", float, None, "Zero every weight with |w| < threshold instead of using sparsity.", min=0.0),
        Option("scope", str, "layer", "layer: each tensor reaches the sparsity; global: one magnitude ranking over all tensors.", choices=("layer", "global")),
        Option("embeddings", bool, False, "Also prune Gather embedding tables (input 0 of Gather)."),
        Option("min_size", int, 128, "Skip weight tensors with fewer elements than this.", min=0),
    )

    @classmethod
    def check_options(cls, values: dict[str, Any], given: set[str]) -> None:
        if "threshold" in given and "sparsity" in given:
            raise cls.option_error("give either sparsity or threshold, not both")

    def apply(self, model: onnx.ModelProto, options: dict[str, Any], context: onnxshrink.Context) -> dict[str, Any]:
        op_inputs = dict(DEFAULT_WEIGHT_INPUTS)
        if options["embeddings"]:
            op_inputs.update(EMBEDDING_INPUTS)
        chosen, skipped = [], []
        for weight in onnxshrink.weight_tensors(model, op_inputs):
            reason = _skip_reason(weight, options["min_size"])
            if reason:
                skipped.append({"name": weight.name, "reason": reason})
            else:
                chosen.append(weight)

        arrays = [w.array() for w in chosen]
        magnitudes = [np.abs(a.astype(np.float32)).ravel() for a in arrays]
        if options["threshold"] is not None:
            masks = [m < options["threshold"] for m in magnitudes]
        elif options["scope"] == "global":
            masks = _split(_smallest(np.concatenate(magnitudes) if magnitudes else np.zeros(0), options["sparsity"]), magnitudes)
        else:
            masks = [_smallest(m, options["sparsity"]) for m in magnitudes]

        tensors, total, zeros, packed_before, packed_after = [], 0, 0, 0, 0
        with context.progress("pruning tensors", total=len(chosen)) as task:
            for weight, array, mask in zip(chosen, arrays, masks):
                pruned = array.copy().ravel()
                pruned[mask] = 0
                pruned = pruned.reshape(array.shape)
                before = float(np.mean(array == 0)) if array.size else 0.0
                packed_before += len(zlib.compress(array.tobytes(), 6))
                packed_after += len(zlib.compress(pruned.tobytes(), 6))
                weight.set_array(pruned)
                nz = int(np.count_nonzero(pruned))
                total += pruned.size
                zeros += pruned.size - nz
                tensors.append(
                    {
                        "name": weight.name,
                        "op_types": weight.op_types,
                        "shape": list(weight.shape),
                        "source": weight.source,
                        "in_subgraph": weight.in_subgraph,
                        "shared_by": len(weight.uses),
                        "sparsity_before": round(before, 6),
                        "sparsity_after": round(1 - nz / pruned.size, 6) if pruned.size else 0.0,
                    }
                )
                task.advance()
        if not chosen:
            context.warn("no weight tensor matched; the model is unchanged")
        return {
            "mode": "threshold" if options["threshold"] is not None else options["scope"],
            "pruned_tensors": len(tensors),
            "pruned_params": total,
            "zeros": zeros,
            "sparsity": round(zeros / total, 6) if total else 0.0,
            "compressed_bytes_before": packed_before,
            "compressed_bytes_after": packed_after,
            "tensors": tensors,
            "skipped": skipped,
        }


def _skip_reason(weight: onnxshrink.WeightTensor, min_size: int) -> str | None:
    if len(weight.shape) < 2:
        return "1-D tensor (bias-like)"
    if weight.size < min_size:
        return f"{weight.size} elements < min_size {min_size}"
    return None


def _smallest(magnitudes: np.ndarray, fraction: float) -> np.ndarray:
    """A mask of exactly round(fraction * n) smallest entries; ties broken by position (deterministic)."""
    k = int(round(fraction * magnitudes.size))
    mask = np.zeros(magnitudes.size, dtype=bool)
    if k:
        mask[np.argsort(magnitudes, kind="stable")[:k]] = True
    return mask


def _split(mask: np.ndarray, parts: list[np.ndarray]) -> list[np.ndarray]:
    bounds = np.cumsum([p.size for p in parts])[:-1]
    return list(np.split(mask, bounds)) if parts else []


@onnxshrink.hookimpl
def register_methods(register):
    register(WeightPrune)
