"""Where a model's bytes are: every stored tensor attributed to the layer input it feeds.

A tensor a node reads directly, or through nodes whose inputs are all constant (a decoder that
onnxruntime folds at load: ``DequantizeLinear``, ``Cast → Mul``, a packed-bit unpacker), belongs to
the first node that also reads a run-time value: the *layer*, at one input *slot*. Layers are keyed by
their first output's name (methods that rewrite a layer keep it, so its consumers stay wired), which
lines up an input model and its shrunk output: :func:`tensor_breakdown` gives one row per layer input
with its stored form and bytes before and after, plus totals per op type. Nothing is read from
external-data files: sizes come from the tensor headers.
"""

from __future__ import annotations

import os
from typing import Any

import onnx

from onnxshrink.errors import InvalidModelError
from onnxshrink.ir.walk import iter_graphs

MAX_ROWS = 1000  # the largest layer inputs listed one by one; the rest are summed in ``other``
_BITS = {
    onnx.TensorProto.STRING: 0,
    onnx.TensorProto.BOOL: 8,
}
for _name, _bits in (("INT4", 4), ("UINT4", 4), ("FLOAT4E2M1", 4), ("INT2", 2), ("UINT2", 2)):
    if hasattr(onnx.TensorProto, _name):
        _BITS[getattr(onnx.TensorProto, _name)] = _bits

Key = tuple[str, int]  # (layer's first output, input slot)


def stored_bytes(tensor: onnx.TensorProto) -> int:
    """Bytes a tensor's values take in the file (raw data, external length, or elements × element size)."""
    if tensor.HasField("raw_data"):
        return len(tensor.raw_data)
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        entries = {e.key: e.value for e in tensor.external_data}
        if "length" in entries:
            return int(entries["length"])
    numel = 1
    for d in tensor.dims:
        numel *= int(d)
    if tensor.data_type == onnx.TensorProto.STRING:
        return sum(len(s) for s in tensor.string_data)
    bits = _BITS.get(tensor.data_type)
    if bits is None:
        bits = 8 * onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    return (numel * bits + 7) // 8


def _dtype_name(tensor: onnx.TensorProto) -> str:
    """numpy's spelling (float32, int8, int4), ONNX's where numpy has none."""
    try:
        return str(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type))
    except (KeyError, TypeError, ValueError):
        return onnx.TensorProto.DataType.Name(tensor.data_type).lower()


class _Layers:
    """The walk over one model: constant values, the stored tensors behind each, and the layers they feed."""

    def __init__(self, model: onnx.ModelProto):
        self.tensors: dict[str, onnx.TensorProto] = {}
        self.sources: dict[str, tuple[str, ...]] = {}  # value name -> stored tensors folded into it
        self.decoders: dict[str, tuple[str, ...]] = {}  # value name -> op types of the folding nodes
        self.rows: dict[Key, dict[str, Any]] = {}
        self.claimed: set[str] = set()
        for graph, _ in iter_graphs(model.graph):
            for t in graph.initializer:
                self._stored(t.name, t)
            for sp in graph.sparse_initializer:
                self._stored(sp.values.name or sp.indices.name, sp.values)
        for graph, _ in iter_graphs(model.graph):
            for index, node in enumerate(graph.node):
                self._visit(node, index)
        self.unattributed = [name for name in self.tensors if name not in self.claimed]

    def _stored(self, name: str, tensor: onnx.TensorProto) -> None:
        self.tensors[name] = tensor
        self.sources[name] = (name,)
        self.decoders[name] = ()

    def _visit(self, node: onnx.NodeProto, index: int) -> None:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and node.output:
            value = next((a.t for a in node.attribute if a.HasField("t")), None)
            if value is not None:
                self._stored(node.output[0], value)
            return
        inputs = [name for name in node.input if name]
        has_subgraph = any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)
        if inputs and not has_subgraph and all(name in self.sources for name in inputs):
            folded = tuple(dict.fromkeys(s for name in inputs for s in self.sources[name]))
            ops = tuple(dict.fromkeys((*(o for name in inputs for o in self.decoders[name]), node.op_type)))
            for out in node.output:
                if out:
                    self.sources[out], self.decoders[out] = folded, ops
            return
        layer = node.output[0] if node.output and node.output[0] else f"{node.op_type}#{index}"
        for slot, name in enumerate(node.input):
            if name not in self.sources:
                continue
            fresh = [s for s in self.sources[name] if s not in self.claimed]
            if not fresh:
                continue
            self.claimed.update(fresh)
            key = (layer, slot)
            row = self.rows.setdefault(
                key,
                {"layer": node.name or layer, "op_type": node.op_type, "input": name, "tensors": [], "decoders": []},
            )
            row["tensors"] += fresh
            row["decoders"] += [o for o in self.decoders[name] if o not in row["decoders"]]

    def op_types(self) -> dict[str, str]:
        return {layer: row["op_type"] for (layer, _), row in self.rows.items()}

    def merge_layer(self, layer: str) -> None:
        """One row (slot -1) for every input of ``layer``: its op was replaced, so slots do not line up."""
        keys = [key for key in self.rows if key[0] == layer]
        merged = {**self.rows[keys[0]], "tensors": [], "decoders": []}
        for key in keys:
            row = self.rows.pop(key)
            merged["tensors"] += row["tensors"]
            merged["decoders"] += [o for o in row["decoders"] if o not in merged["decoders"]]
        self.rows[(layer, -1)] = merged

    def summary(self, key: Key) -> dict[str, Any] | None:
        row = self.rows.get(key)
        if row is None:
            return None
        tensors = [self.tensors[n] for n in row["tensors"]]
        dtypes = list(dict.fromkeys(_dtype_name(t) for t in tensors))
        form = "+".join(dtypes) + (f" via {'→'.join(row['decoders'])}" if row["decoders"] else "")
        main = max(tensors, key=stored_bytes)
        return {
            "form": form,
            "bytes": sum(stored_bytes(t) for t in tensors),
            "tensors": len(tensors),
            "shape": [int(d) for d in main.dims],  # of the largest stored tensor
        }


def _load(path: str | os.PathLike) -> onnx.ModelProto:
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as e:  # onnx raises several types for unreadable files
        raise InvalidModelError(f"cannot read model {str(path)!r}: {' '.join(str(e).split())}") from None


def tensor_breakdown(before: str | os.PathLike, after: str | os.PathLike | None = None) -> dict[str, Any]:
    """Per layer input and per op type, stored bytes of ``before`` and (when given) ``after``.

    Returns ``{"rows": [...], "by_op_type": {op: {"before", "after"}}, "other": {...}, "unattributed": {...}}``.
    Each row: ``layer`` (node name), ``op_type`` (before), ``slot`` (input index; ``null`` when the
    layer's op was replaced, e.g. Gemm by MatMulNBits: then one row holds all its inputs), ``tensor``
    (the name the layer reads),
    ``shape`` (of the largest stored tensor before), ``before`` and ``after`` (``form``: stored dtypes
    and the folded decoder ops, ``bytes``, ``tensors``; ``after.shape`` only where it differs; ``null`` where the
    layer input has no stored tensor on
    that side, e.g. a removed layer). Rows are sorted by bytes before (then after), largest first; past
    ``MAX_ROWS`` the rest are summed in ``other`` (``rows``, ``before``, ``after``).
    """
    sides = [_Layers(_load(before))] + ([_Layers(_load(after))] if after is not None else [])
    if len(sides) > 1:
        ops_after = sides[1].op_types()
        for layer, op in sides[0].op_types().items():
            if layer in ops_after and ops_after[layer] != op:  # e.g. Gemm rewritten as MatMulNBits
                sides[0].merge_layer(layer)
                sides[1].merge_layer(layer)
    keys = list(dict.fromkeys([*sides[0].rows, *(sides[1].rows if len(sides) > 1 else {})]))
    rows, by_op = [], {}
    for key in keys:
        first = sides[0].rows.get(key) or sides[1].rows[key]
        b = sides[0].summary(key)
        a = sides[1].summary(key) if len(sides) > 1 else None
        rows.append(
            {
                "layer": first["layer"],
                "op_type": (sides[0].rows.get(key) or first)["op_type"],
                "slot": key[1] if key[1] >= 0 else None,
                "tensor": first["input"],
                "shape": (b or a).pop("shape"),
                "before": b,
                "after": a,
            }
        )
        if a is not None and "shape" in a:
            shape = a.pop("shape")
            if shape != rows[-1]["shape"]:
                a["shape"] = shape  # only where it changed (pruned channels, packed storage)
        op = rows[-1]["op_type"]
        totals = by_op.setdefault(op, {"before": 0, "after": 0})
        totals["before"] += b["bytes"] if b else 0
        totals["after"] += a["bytes"] if a else 0
    rows.sort(
        key=lambda r: (
            -(r["before"] or {}).get("bytes", 0),
            -(r["after"] or {}).get("bytes", 0),
            r["layer"],
            r["slot"] if r["slot"] is not None else -1,
        )
    )
    rest = rows[MAX_ROWS:]
    result: dict[str, Any] = {
        "rows": rows[:MAX_ROWS],
        "by_op_type": dict(sorted(by_op.items(), key=lambda kv: -kv[1]["before"])),
        "other": {
            "rows": len(rest),
            "before": sum((r["before"] or {}).get("bytes", 0) for r in rest),
            "after": sum((r["after"] or {}).get("bytes", 0) for r in rest),
        },
        "unattributed": {
            "before": sum(stored_bytes(sides[0].tensors[n]) for n in sides[0].unattributed),
            "after": sum(stored_bytes(sides[1].tensors[n]) for n in sides[1].unattributed) if len(sides) > 1 else 0,
        },
    }
    if after is None:
        for r in result["rows"]:
            del r["after"]
        for t in result["by_op_type"].values():
            del t["after"]
        del result["other"]["after"]
        del result["unattributed"]["after"]
    return result
