"""Size of a model on disk: bytes (with external data), parameters, non-zeros, compressed bytes.

``params`` and ``nonzeros`` count the elements of every initializer, sparse initializer (dense size /
stored values) and ``Constant``-node tensor, in the main graph, in every ``If``/``Loop``/``Scan``
subgraph and in model-local functions. ``compressed_bytes`` is the length of one zlib stream (level 1:
within a few percent of level 6 on weights and six times faster) over the model file followed by its
external-data files in sorted order, read in 1 MiB chunks; it is ``None`` for models over
``COMPRESS_LIMIT`` bytes (128 MiB), where compressing would cost more than the rest of the run.
External-data files are counted once each, resolved relative to the model's folder; a location that is
absolute, leaves that folder or does not exist is an ``InvalidModelError`` naming the file.
"""

from __future__ import annotations

import copy
import os
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from onnxshrink.errors import InvalidModelError
from onnxshrink.ir.external import external_data_dir, external_source, plain_dtype, read_external
from onnxshrink.ir.tensors import element_count, stored_tensors
from onnxshrink.ir.walk import iter_graphs

CHUNK = 1 << 20
COMPRESS_LEVEL = 1
COMPRESS_LIMIT = 128 << 20
SIZE_KEYS = ("file_bytes", "params", "nonzeros", "compressed_bytes")


def measure_size(model_path: str | os.PathLike) -> dict:
    """``{"file_bytes", "external_files", "params", "nonzeros", "compressed_bytes"}`` for a model file.

    A file measured before and unchanged since (same inode, size and times, external data included)
    is not read again: a run measures its input and output for the report and again for validation.
    """
    path = Path(model_path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # onnx raises several types for unreadable files
        raise InvalidModelError(f"cannot read model {str(path)!r}: {' '.join(str(e).split())}") from None
    base = path.resolve().parent
    tensors = list(stored_tensors(model))
    external = sorted({_external_file(t, path, base) for t in tensors if _is_external(t)})
    files = [path, *external]
    key = (str(path.resolve()), *(_identity(f) for f in files))
    if key in _MEASURED:
        return copy.deepcopy(_MEASURED[key])
    params = nonzeros = 0
    buffer = np.empty(CHUNK, np.uint8)  # reused for every external tensor, in pieces that stay in the CPU cache
    for tensor, dense_size in _counted(model):
        params += dense_size
        nonzeros += _count_nonzero(tensor, base, path, buffer)
    file_bytes = sum(f.stat().st_size for f in files)
    while len(_MEASURED) >= 8:  # a long-lived process measures many files: keep the latest few
        del _MEASURED[next(iter(_MEASURED))]
    _MEASURED[key] = result = {
        "file_bytes": file_bytes,
        "external_files": [str(f.relative_to(base)) for f in external],
        "params": int(params),
        "nonzeros": int(nonzeros),
        "compressed_bytes": _compressed_bytes(files) if file_bytes <= COMPRESS_LIMIT else None,
    }
    return copy.deepcopy(result)


_MEASURED: dict[tuple, dict] = {}


def _identity(path: Path) -> tuple[int, int, int, int, int]:
    st = path.stat()
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def compare_size(base: dict, cand: dict) -> dict:
    """Candidate/baseline ratios: ``size_ratio``, ``params_ratio``, ``nonzeros_ratio``, ``compressed_ratio``."""
    return {
        "size_ratio": _ratio(cand["file_bytes"], base["file_bytes"]),
        "params_ratio": _ratio(cand["params"], base["params"]),
        "nonzeros_ratio": _ratio(cand["nonzeros"], base["nonzeros"]),
        "compressed_ratio": _ratio(cand["compressed_bytes"], base["compressed_bytes"]),
    }


def _ratio(c: int | None, b: int | None) -> float | None:
    """c / b; 1.0 when both are zero; None when only the baseline is zero or a value is unknown."""
    if c is None or b is None:
        return None
    if b == 0:
        return 1.0 if c == 0 else None
    return c / b


# ------------------------------------------------------------------------------------ tensor walking


def _all_nodes(model: onnx.ModelProto) -> Iterator[onnx.NodeProto]:
    """Nodes of every graph and subgraph, and of model-local functions (and their subgraphs)."""
    for g, _ in iter_graphs(model.graph):
        yield from g.node
    for fn in model.functions:
        for node in fn.node:
            yield node
            for attr in node.attribute:
                for sub in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs):
                    for g, _ in iter_graphs(sub):
                        yield from g.node


def _counted(model: onnx.ModelProto) -> Iterator[tuple[onnx.TensorProto | list, int]]:
    """(values, dense element count) for every parameter tensor."""
    for g, _ in iter_graphs(model.graph):
        for t in g.initializer:
            yield t, element_count(t)
        for sp in g.sparse_initializer:
            yield sp.values, element_count(sp)
    for node in _all_nodes(model):
        if node.op_type != "Constant" or node.domain not in ("", "ai.onnx"):
            continue
        for attr in node.attribute:
            if attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR:
                yield attr.t, element_count(attr.t)
            elif attr.name == "sparse_value":
                yield attr.sparse_tensor.values, element_count(attr.sparse_tensor)
            elif attr.name in ("value_float", "value_int"):
                yield [attr.f if attr.name == "value_float" else attr.i], 1
            elif attr.name in ("value_floats", "value_ints"):
                vals = list(attr.floats if attr.name == "value_floats" else attr.ints)
                yield vals, len(vals)
            elif attr.name == "value_string":
                yield [attr.s], 1
            elif attr.name == "value_strings":
                yield list(attr.strings), len(attr.strings)


def _is_external(t: onnx.TensorProto) -> bool:
    return isinstance(t, onnx.TensorProto) and t.data_location == onnx.TensorProto.EXTERNAL


def _external_file(t: onnx.TensorProto, model_path: Path, base: Path) -> Path:
    location = next((e.value for e in t.external_data if e.key == "location"), None)
    if not location:
        raise InvalidModelError(f"model {str(model_path)!r}: tensor {t.name!r} is external but names no location")
    if os.path.isabs(location):
        raise InvalidModelError(
            f"model {str(model_path)!r}: tensor {t.name!r} has an absolute external-data path {location!r}"
        )
    target = (base / location).resolve()
    if base != target and base not in target.parents:
        raise InvalidModelError(
            f"model {str(model_path)!r}: tensor {t.name!r} external-data path {location!r} leaves the model folder"
        )
    if not target.is_file():
        raise InvalidModelError(
            f"model {str(model_path)!r}: external-data file {location!r} for tensor {t.name!r} does not exist"
        )
    return target


# Float types whose value is zero exactly when the bits other than the sign are: count_nonzero on
# those bits (integer compares) is several times faster than on the floats.
_SIGN_FREE = {
    onnx.TensorProto.FLOAT: (np.uint32, 0x7FFFFFFF),
    onnx.TensorProto.FLOAT16: (np.uint16, 0x7FFF),
    onnx.TensorProto.DOUBLE: (np.uint64, 0x7FFFFFFFFFFFFFFF),
}


def _count_nonzero(values, base: Path, model_path: Path, buffer: np.ndarray | None = None) -> int:
    if isinstance(values, list):
        return sum(1 for v in values if v)
    try:
        if values.data_location == onnx.TensorProto.EXTERNAL:
            with external_data_dir(base):  # location checked above
                counted = _count_external(values, np.empty(CHUNK, np.uint8) if buffer is None else buffer)
                if counted is not None:
                    return counted
                arr = read_external(values)
        else:
            arr = numpy_helper.to_array(values)
    except Exception as e:
        raise InvalidModelError(
            f"model {str(model_path)!r}: cannot read tensor {values.name!r}: {' '.join(str(e).split())}"
        ) from None
    if arr.dtype == object:
        return int(sum(1 for v in arr.reshape(-1) if v))
    try:
        return int(np.count_nonzero(arr))
    except TypeError:  # some ml_dtypes types
        return int(np.count_nonzero(arr.astype(np.float32)))


def _count_external(tensor: onnx.TensorProto, buffer: np.ndarray) -> int | None:
    """Non-zeros of a plain external tensor read into ``buffer``; None for other types (read as usual)."""
    path, offset, length = external_source(tensor)
    kind = _SIGN_FREE.get(tensor.data_type)
    dtype = np.dtype(kind[0]) if kind else plain_dtype(tensor.data_type)
    if dtype is None or length % dtype.itemsize or length // dtype.itemsize != element_count(tensor):
        return None
    count = 0
    with open(path, "rb") as fh:
        fh.seek(offset)
        for start in range(0, length, CHUNK):
            size = min(CHUNK, length - start)
            data = buffer[:size]
            if fh.readinto(data) != size:
                raise OSError(f"external data of tensor {tensor.name!r} ended early in {path}")
            words = data.view(dtype.newbyteorder("<"))
            if kind:
                np.bitwise_and(words, kind[1], out=words)  # -0.0 counts as zero, NaN as non-zero, as for the floats
            count += int(np.count_nonzero(words))
    return count


def _compressed_bytes(files: list[Path]) -> int:
    comp = zlib.compressobj(COMPRESS_LEVEL)
    total = 0
    for f in files:
        with open(f, "rb") as fh:
            while chunk := fh.read(CHUNK):
                total += len(comp.compress(chunk))
    total += len(comp.flush())
    return total
