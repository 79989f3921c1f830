"""The tensors a model stores, wherever it stores them, and their sizes (without reading external data)."""

from __future__ import annotations

import math
from collections.abc import Iterator

import onnx

FLOAT_TYPES = frozenset(
    {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE}
)
_T = onnx.TensorProto
# Sub-byte types are packed: raw_data holds ceil(n * bits / 8) bytes.
_PACKED_BITS = {
    getattr(_T, name): bits
    for name, bits in (
        ("INT4", 4),
        ("UINT4", 4),
        ("FLOAT4E2M1", 4),
        ("INT2", 2),
        ("UINT2", 2),
        ("FLOAT6E2M3", 6),
        ("FLOAT6E3M2", 6),
    )
    if hasattr(_T, name)
}


def stored_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every tensor the file stores, wherever onnx or onnxruntime may read one: initializers, sparse
    tensors (values and indices), node attributes whatever their declared type, every subgraph and
    model-local functions. A superset of what onnx's external-data loader visits."""
    yield from _flatten(stored_items(model))


def iter_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Every tensor a graph stores (initializers, sparse tensors, node attributes), subgraphs included."""
    yield from _flatten(_graph_items(graph))


def stored_items(model: onnx.ModelProto) -> Iterator[onnx.TensorProto | onnx.SparseTensorProto]:
    """What :func:`stored_tensors` walks, with sparse tensors kept whole (for their dense shape)."""
    yield from _graph_items(model.graph)
    for function in model.functions:
        yield from _node_items(function.node)


def _flatten(items: Iterator[onnx.TensorProto | onnx.SparseTensorProto]) -> Iterator[onnx.TensorProto]:
    for item in items:
        if isinstance(item, onnx.SparseTensorProto):
            yield item.values
            yield item.indices
        else:
            yield item


def _graph_items(g: onnx.GraphProto) -> Iterator[onnx.TensorProto | onnx.SparseTensorProto]:
    yield from g.initializer
    yield from g.sparse_initializer
    yield from _node_items(g.node)


def _node_items(nodes) -> Iterator[onnx.TensorProto | onnx.SparseTensorProto]:
    for node in nodes:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("sparse_tensor"):
                yield attr.sparse_tensor
            yield from attr.sparse_tensors
            if attr.HasField("g"):
                yield from _graph_items(attr.g)
            for sub in attr.graphs:
                yield from _graph_items(sub)


def element_count(tensor: onnx.TensorProto | onnx.SparseTensorProto) -> int:
    """Elements a tensor's dims declare (1 for a scalar)."""
    return math.prod(int(d) for d in tensor.dims)


def raw_nbytes(tensor: onnx.TensorProto) -> int | None:
    """Bytes of raw data a tensor's dims and type call for (sub-byte types packed); None for strings
    and types this onnx does not know."""
    if tensor.data_type == _T.STRING:
        return None
    count = element_count(tensor)
    bits = _PACKED_BITS.get(tensor.data_type)
    if bits is not None:
        return (count * bits + 7) // 8
    try:
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    except (KeyError, ValueError, TypeError):
        return None
    return count * itemsize


def tensor_bytes(tensor: onnx.TensorProto) -> int:
    """Bytes of a tensor's values as stored (sub-byte types packed; strings: their bytes)."""
    nbytes = raw_nbytes(tensor)
    return sum(len(s) for s in tensor.string_data) if nbytes is None else nbytes


def typed_values(tensor: onnx.TensorProto) -> int:
    """Values a tensor's dims and type call for in its typed field (int32_data, float_data...)."""
    count = element_count(tensor)
    if tensor.data_type in (_T.COMPLEX64, _T.COMPLEX128):
        return 2 * count
    if _PACKED_BITS.get(tensor.data_type) in (2, 4):  # packed into int32_data; 6-bit types are not
        return (count * _PACKED_BITS[tensor.data_type] + 7) // 8
    return count


def type_name(data_type: int) -> str:
    """``float``, ``int4``...: a tensor type as error messages name it."""
    try:
        return _T.DataType.Name(data_type).lower()
    except ValueError:
        return f"type {data_type}"


def inline_bytes(model: onnx.ModelProto) -> int:
    """Bytes of tensor data held in the proto itself (not in external-data files)."""
    return sum(len(t.raw_data) for t in stored_tensors(model))


def parameter_count(model: onnx.ModelProto) -> int:
    """Elements of every float tensor stored in the model (weights, biases, normalisation parameters)."""
    return sum(element_count(t) for t in iter_tensors(model.graph) if t.data_type in FLOAT_TYPES)
