"""Store pruned tensors in the smallest form onnxruntime folds at load: dense, or a bitmask + non-zeros."""

from __future__ import annotations

import numpy as np
import onnx

import onnxshrink

STORE_CHOICES = ("auto", "dense", "sparse")
SPARSE_DTYPES = frozenset({onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE})
SPARSE_OPSET = 11  # BitShift and CumSum decode the mask


def sparse_blocker(model: onnx.ModelProto, weight: onnxshrink.WeightTensor, ignore_opset: bool = False) -> str | None:
    """Why ``weight`` cannot be stored as a bitmask plus non-zeros, or None when it can."""
    if weight.source == "overridable":
        return "also a graph input: a caller may feed another value, so it stays a plain initializer"
    if weight.dtype not in SPARSE_DTYPES:
        return f"dtype {onnx.TensorProto.DataType.Name(weight.dtype)} has no sparse form here"
    if not ignore_opset and onnxshrink.model_opset(model) < SPARSE_OPSET:
        return f"opset {onnxshrink.model_opset(model)} < {SPARSE_OPSET} (the decoder needs BitShift and CumSum)"
    return None


def sparse_bytes(model: onnx.ModelProto, weight: onnxshrink.WeightTensor, values: np.ndarray) -> int:
    """Bytes the bitmask form of ``values`` adds to the file: its initializers and its decoder nodes."""
    _, nodes, inits = onnxshrink.weight_chain(
        values,
        weight.name,
        onnxshrink.all_names(model),
        form="sparse",
        dtype=weight.dtype,
        opset=onnxshrink.model_opset(model),
    )
    return sum(t.ByteSize() for t in inits) + sum(n.ByteSize() for n in nodes)


def store_pruned(model: onnx.ModelProto, names: list[str], store: str) -> dict:
    """Store each of the (already pruned) weights ``names`` as ``store`` says; the stats of what was written.

    ``auto``: the bitmask form where it makes the file smaller (its values and decoder nodes against
    the dense tensor as serialized); ``sparse``: the bitmask form wherever it can be written;
    ``dense``: leave the tensors as they are.
    """
    before = after = 0
    tensors, dense = [], []
    wanted = set(names)
    for weight in [w for w in onnxshrink.weight_tensors(model, _all_ops()) if w.name in wanted]:
        values = weight.array()
        dense_bytes = weight.proto.ByteSize()
        before += dense_bytes
        reason = "store=dense" if store == "dense" else sparse_blocker(model, weight)
        size = None
        if reason is None:
            size = sparse_bytes(model, weight, values)
            if store == "auto" and size >= dense_bytes:
                reason = f"bitmask form {size} B >= dense {dense_bytes} B"
        if reason is not None:
            after += dense_bytes
            dense.append({"tensor": weight.name, "bytes": dense_bytes, "reason": reason})
            continue
        result = onnxshrink.store_weight(model, weight, values, form="sparse")
        after += size
        tensors.append({**result.describe(), "serialized_bytes": size, "dense_bytes": dense_bytes})
    return {
        "store": store,
        "stored_sparse": len(tensors),
        "weight_bytes_before": before,
        "weight_bytes_after": after,
        "bytes_saved": before - after,
        "sparse_tensors": tensors,
        "dense_tensors": dense,
    }


def _all_ops() -> dict[str, tuple[int, ...]]:
    return {**onnxshrink.DEFAULT_WEIGHT_INPUTS, **onnxshrink.EMBEDDING_INPUTS}
