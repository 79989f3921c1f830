"""sparse_store: store sparse (pruned) weights as a packed bitmask plus their non-zero values."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx

import onnxshrink
from onnxshrink import Method, Option

from .shared.layers import WEIGHTED_OPS, find_layers


class SparseStore(Method):
    """Shrink the file of a pruned model: each sparse weight becomes a bitmask plus its non-zeros.

    A weight with zeros (from ``weight_prune``, say) is stored as a 1-bit mask of its non-zero
    positions plus the non-zero values, decoded by BitShift → Cast → CumSum → Mul(mask) → Gather,
    which onnxruntime folds back into the dense weight when it creates the session: the file
    shrinks with the sparsity (N/8 + 4·nnz bytes for float32) and run time and outputs are the dense
    model's. ``bits=2..8`` also quantizes the non-zero values (symmetric, one scale per output
    channel, so zeros stay exactly zero) and packs them at that width. A tensor is stored sparse
    only when it has at least ``min_sparsity`` zeros and that is smaller than storing it as it is.
    Weights that are also graph inputs, 1-D or under ``min_size`` elements are left as they are.
    """

    name = "sparse_store"
    kind = "transform"
    options = (
        Option(
            "min_sparsity",
            float,
            0.1,
            "Store a tensor sparse only with at least this fraction of zeros.",
            min=0.0,
            max=1.0,
        ),
        Option(
            "bits",
            int,
            0,
            "0: keep the non-zero values as they are; 2-8: quantize them (symmetric, per output channel) and pack.",
            min=0,
            max=8,
        ),
        Option("op_types", list, list(WEIGHTED_OPS), "Op types whose weights are considered.", choices=WEIGHTED_OPS),
        Option("exclude", list, None, "Node names, op types or weight names to leave as they are."),
        Option("min_size", int, 128, "Leave weights with fewer elements as they are.", min=0),
    )
    # Searched by `onnxshrink tune` (docs/plugin-authors.md, "Search space"); other options keep their defaults.
    search_space = (onnxshrink.Tunable("bits", choices=(0, 8, 4)),)

    @classmethod
    def check_options(cls, values: onnxshrink.Options, given: set[str]) -> None:
        if values.bits == 1:
            raise cls.option_error("bits=1 cannot hold signed non-zero values; use 0 (float) or 2 to 8")
        if not values.op_types:
            raise cls.option_error("op_types is empty; name at least one of " + ", ".join(WEIGHTED_OPS))

    def apply(self, model: onnx.ModelProto, options: onnxshrink.Options, context: onnxshrink.Context) -> dict[str, Any]:
        self.check_exclude(model, options.exclude)
        layers, left = find_layers(
            model, op_types=options.op_types, exclude=options.exclude or (), min_size=options.min_size
        )
        stored, before, after, elements = [], 0, 0, 0
        for layer in layers:
            array = layer.weight.array()
            sparsity = float(np.mean(array == 0))
            if sparsity < options.min_sparsity:
                left.append(
                    {**layer.describe(), "reason": f"sparsity {sparsity:.3f} < min_sparsity {options.min_sparsity}"}
                )
                continue
            values = array
            if options.bits:
                values = onnxshrink.quantize(array.astype(np.float32), options.bits, symmetric=True, axis=layer.axis)
            dense_bytes = layer.weight.size * array.dtype.itemsize
            trial = onnxshrink.weight_chain(
                values,
                layer.name,
                onnxshrink.all_names(model),
                form="sparse",
                dtype=layer.weight.dtype,
                opset=onnxshrink.model_opset(model),
            )
            if not options.bits and sum(onnxshrink.tensor_bytes(t) for t in trial[2]) >= dense_bytes:
                left.append(
                    {
                        **layer.describe(),
                        "reason": f"sparsity {sparsity:.3f} too low: sparse storage would not be smaller",
                    }
                )
                continue
            result = onnxshrink.store_weight(model, layer.weight, values, form="sparse")
            stored.append({**result.describe(), "layers": layer.labels, "sparsity": round(sparsity, 6)})
            before += dense_bytes
            after += result.stored_bytes
            elements += result.elements
        if not stored:
            context.warn("no weight was stored sparse; the model is unchanged (see 'left' for why)")
        return {
            "stored_tensors": len(stored),
            "value_bits": options.bits or "as stored",
            "weight_bytes_before": before,
            "weight_bytes_after": after,
            "bits_per_weight": round(8 * after / elements, 4) if elements else 0.0,
            "tensors": stored,
            "left": left,
        }


@onnxshrink.hookimpl
def register_methods(register):
    register(SparseStore)
