"""Float16 storage of a float32 constant: a float16 copy plus a Cast back to float32.

onnxruntime folds the Cast when it creates the session, so the model computes in float32 from the
rounded values while the file holds half the bytes. Used by the ``float16`` method and by
int_quant's float16 form (``quant/forms.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx

import onnxshrink

FLOAT16_LIMIT = float(np.finfo(np.float16).max)


def beyond_float16(array: np.ndarray) -> bool:
    """Whether a finite value of ``array`` lies beyond float16's range (it would become inf)."""
    finite = np.abs(array[np.isfinite(array)])
    return bool(finite.size) and float(finite.max()) > FLOAT16_LIMIT


@dataclass(frozen=True)
class Float16Stored:
    """What :func:`store_float16` wrote: the float16 tensor and how far the rounding moved the values."""

    tensor: onnx.TensorProto
    max_abs_error: float  # over the finite values
    flushed_to_zero: int  # non-zero values too small for float16 that became 0


def store_float16(
    model: onnx.ModelProto,
    weight: onnxshrink.WeightTensor,
    taken: set[str],
    array: np.ndarray | None = None,
    uses: Sequence[onnxshrink.Use] | None = None,
) -> Float16Stored:
    """Replace the float32 ``weight`` by ``<name>_float16`` → Cast(to=FLOAT) in front of its readers.

    ``array`` is the weight's values when the caller has read them already; ``uses`` (a subset of the
    readers) keeps the float tensor for the others (see :func:`onnxshrink.replace_weight`). Check
    :func:`beyond_float16` first: values beyond the range would become inf.
    """
    original = weight.array() if array is None else array
    half_values = original.astype(np.float16)
    half = onnx.numpy_helper.from_array(half_values, onnxshrink.unique_name(taken, f"{weight.name}_float16"))
    cast = onnx.helper.make_node(
        "Cast",
        [half.name],
        [weight.name],
        name=onnxshrink.unique_name(taken, f"{weight.name}_cast"),
        to=onnx.TensorProto.FLOAT,
    )
    onnxshrink.replace_weight(model, weight, [cast], [half], uses=uses)
    finite = np.isfinite(original)
    restored = half_values.astype(np.float32)
    error = np.abs(original[finite] - restored[finite])
    flushed = int(np.count_nonzero((original != 0) & (restored == 0)))
    return Float16Stored(half, float(error.max()) if error.size else 0.0, flushed)
