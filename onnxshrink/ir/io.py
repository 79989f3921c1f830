"""Safe model loading and atomic saving.

Loading refuses what could read outside the model's folder or is not a usable ONNX model, with one
line naming the file. Saving never touches the input, writes atomically (temporary file in the target
folder, then ``os.replace``) and names external-data files deterministically.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx
from google.protobuf.message import DecodeError
from onnx import external_data_helper

from onnxshrink.errors import InvalidModelError, UsageError, one_line
from onnxshrink.ir.external import external_tensors, planned_data_bytes, write_with_external_data
from onnxshrink.ir.tensors import (
    element_count,
    inline_bytes,
    raw_nbytes,
    stored_items,
    stored_tensors,
    type_name,
    typed_values,
)
from onnxshrink.ir.walk import iter_graphs

_T = onnx.TensorProto
# The repeated field holding values that are not in raw_data (int32_data for every other type).
_TYPED_FIELD = {
    _T.FLOAT: "float_data",
    _T.COMPLEX64: "float_data",
    _T.DOUBLE: "double_data",
    _T.COMPLEX128: "double_data",
    _T.INT64: "int64_data",
    _T.UINT32: "uint64_data",
    _T.UINT64: "uint64_data",
    _T.STRING: "string_data",
}


_VALUE_FIELDS = ("float_data", "int32_data", "string_data", "int64_data", "double_data", "uint64_data")

PROTOBUF_LIMIT = 2**31 - 1


EXTERNAL_DATA_KEYS = frozenset({"location", "offset", "length", "checksum", "basepath"})  # the spec's, and onnx's


@dataclass
class LoadedModel:
    """A model read from disk, with its external data loaded into memory."""

    path: Path
    model: onnx.ModelProto
    external_files: list[Path] = field(default_factory=list)
    external_bytes: int = 0

    @property
    def uses_external_data(self) -> bool:
        return bool(self.external_files)


def _fail(path: Path, message: str) -> InvalidModelError:
    return InvalidModelError(f"{path}: {message}")


def read_model_proto(path: str | os.PathLike) -> onnx.ModelProto:
    """Parse the .onnx file (not its external data), refusing what is not an ONNX model."""
    p = Path(path)
    if not p.exists():
        raise _fail(p, "no such file")
    if p.is_dir():
        raise _fail(p, "is a folder, not an .onnx file")
    try:
        size = p.stat().st_size
        if size == 0:
            raise _fail(p, "empty file, not an ONNX model")
        if size > PROTOBUF_LIMIT:  # refused before reading: protobuf cannot parse it anyway
            raise _fail(
                p,
                f"{_human(size)} is over protobuf's 2 GiB limit for an .onnx file; large models keep their weights "
                "in external data",
            )
        with open(p, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise _fail(p, f"cannot read: {exc.strerror or exc}") from None
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise _fail(p, f"not a valid ONNX protobuf (truncated or another format): {exc}") from None
    if not model.HasField("graph") or model.ir_version == 0:
        raise _fail(p, "not an ONNX model (no graph or IR version; truncated or another format)")
    _check_versions(p, model)
    _check_structure(p, model)
    return model


def _check_versions(path: Path, model: onnx.ModelProto) -> None:
    if model.ir_version > onnx.IR_VERSION:
        raise _fail(
            path,
            f"IR version {model.ir_version} is newer than this onnx {onnx.__version__} supports "
            f"({onnx.IR_VERSION}); upgrade onnx",
        )
    newest = onnx.defs.onnx_opset_version()
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx") and opset.version > newest:
            raise _fail(
                path,
                f"opset {opset.version} is newer than this onnx {onnx.__version__} supports ({newest}); upgrade onnx",
            )


def external_data_files(model: onnx.ModelProto, model_path: str | os.PathLike) -> list[Path]:
    """Validate every external-data reference and return the files used (sorted, unique).

    Refuses locations that are absolute, leave the model's folder (also through symlinks), are missing,
    or whose offset/length do not fit the file, before any byte is read.
    """
    return sorted({target for target, _ in _external_references(model, Path(model_path))})


def _external_references(model: onnx.ModelProto, path: Path) -> list[tuple[Path, int]]:
    """(file, bytes to read) of every tensor stored as external data, each checked before any byte is read."""
    base = path.resolve().parent
    refs = []
    for tensor in stored_tensors(model):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        try:
            refs.append(_external_reference(tensor, path, base))
        except (OSError, ValueError, RuntimeError, TypeError) as exc:  # odd names: NUL bytes, too long, symlink loops
            raise _fail(path, f"tensor {tensor.name!r}: unusable external data location: {exc}") from None
    return refs


def _external_reference(tensor: onnx.TensorProto, path: Path, base: Path) -> tuple[Path, int]:
    where = f"tensor {tensor.name!r}"
    info = {entry.key: entry.value for entry in tensor.external_data}
    if not all(
        isinstance(text, str) for item in info.items() for text in item
    ):  # protobuf hands back bytes for bad UTF-8
        raise _fail(path, f"{where}: external data fields are not valid UTF-8")
    unknown = sorted(set(info) - EXTERNAL_DATA_KEYS)
    if unknown:  # onnx would ignore it (a mangled "offset" then reads from offset 0)
        raise _fail(
            path,
            f"{where}: unknown external data key {unknown[0]!r}; known keys: {', '.join(sorted(EXTERNAL_DATA_KEYS))}",
        )
    location = info.get("location", "")
    if not location:
        raise _fail(path, f"{where} has external data without a location")
    if os.path.isabs(location) or location.startswith(("/", "\\")) or (len(location) > 1 and location[1] == ":"):
        raise _fail(
            path,
            f"{where}: external data location {location!r} is absolute; only paths inside the model's folder are "
            "allowed",
        )
    target = (base / location).resolve()
    if target != base and base not in target.parents:
        raise _fail(path, f"{where}: external data location {location!r} leaves the model's folder")
    if not target.is_file():
        raise _fail(path, f"{where}: external data file {location!r} is missing (or not a file)")
    file_size = target.stat().st_size
    try:
        offset = int(info.get("offset", "0"))
        length = int(info["length"]) if "length" in info else file_size - offset
    except ValueError:
        raise _fail(path, f"{where}: external data offset/length are not integers") from None
    if offset < 0 or length < 0:
        raise _fail(path, f"{where}: negative external data offset or length ({offset}, {length})")
    if offset + length > file_size:
        raise _fail(
            path,
            f"{where}: external data {location!r} is too short: needs bytes {offset}..{offset + length}, file has "
            f"{file_size}",
        )
    _check_dims(path, tensor)
    expected = raw_nbytes(tensor)
    if expected is not None and length != expected:
        raise _fail(
            path, f"{where}: external data length {length} does not match its shape and type ({expected} bytes)"
        )
    return target, length


def _check_dims(path: Path, tensor: onnx.TensorProto | onnx.SparseTensorProto) -> None:
    if any(d < 0 for d in tensor.dims):
        name = tensor.values.name if isinstance(tensor, onnx.SparseTensorProto) else tensor.name
        raise _fail(path, f"tensor {name!r} has a negative dimension {list(tensor.dims)}")


def _check_inline_data(path: Path, tensor: onnx.TensorProto) -> None:
    """The data held in the file must be exactly what the tensor's dims and type declare.

    Refuses, before anything is allocated, a tensor that declares 10**12 elements and holds 4 bytes,
    and one holding more than it declares (which would crash the first method that reads it)."""
    _check_dims(path, tensor)
    if tensor.data_location == _T.EXTERNAL or tensor.data_type == _T.UNDEFINED:
        return  # external data is checked against its file; an undefined type is the checker's to refuse
    where = f"tensor {tensor.name!r} (shape {list(tensor.dims)}, {type_name(tensor.data_type)})"
    if tensor.raw_data:
        expected = raw_nbytes(tensor)
        if expected is not None and len(tensor.raw_data) != expected:
            raise _fail(path, f"{where} needs {expected} bytes of data but holds {len(tensor.raw_data)}")
        return
    if tensor.data_type not in _T.DataType.values():
        return  # a type this onnx does not know: the checker's to refuse
    field = _TYPED_FIELD.get(tensor.data_type, "int32_data")
    held = len(getattr(tensor, field))
    expected = typed_values(tensor)
    if held != expected and not (held == 0 and expected == 0):
        others = [f for f in _VALUE_FIELDS if f != field and len(getattr(tensor, f))]
        detail = f" (its values are in {others[0]}, the wrong field for this type)" if others and held == 0 else ""
        raise _fail(path, f"{where} needs {expected} values in {field} but holds {held}{detail}")


def memory_limit() -> int:
    """Bytes of memory this process can use: physical memory, or the cgroup (container) limit when lower."""
    try:
        limit = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        limit = 2**63
    try:
        text = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if text.isdigit():
            limit = min(limit, int(text))
    except OSError:
        pass
    return limit


def _check_memory(path: Path, model: onnx.ModelProto, external: list[tuple[Path, int]]) -> None:
    """Refuse, before reading or allocating, a model whose external data or densified sparse tensors
    would need more memory than the machine has (a sparse file declaring terabytes, say)."""
    external_bytes = sum(length for _, length in external)
    sparse_bytes = 0
    for item in stored_items(model):
        if isinstance(item, onnx.SparseTensorProto):
            _check_dims(path, item)
            try:
                itemsize = onnx.helper.tensor_dtype_to_np_dtype(item.values.data_type).itemsize
            except (KeyError, ValueError, TypeError):
                itemsize = 1
            sparse_bytes += element_count(item) * itemsize
    needed, limit = external_bytes + sparse_bytes, memory_limit()
    if needed > limit:
        what = " and ".join(
            part
            for part in (
                f"{_human(external_bytes)} of external data" if external_bytes else "",
                f"{_human(sparse_bytes)} of dense sparse tensors" if sparse_bytes else "",
            )
            if part
        )
        raise _fail(
            path, f"loading needs {what}, more than this machine's {_human(limit)} of memory; refused before reading"
        )


def _human(n: int) -> str:
    value = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if value < 1024 or unit == "PiB":
            return f"{n} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} bytes"


def _check_structure(path: Path, model: onnx.ModelProto) -> None:
    """What onnx.checker lets through but onnxruntime refuses, or reports without a name: duplicate
    node names in a graph, graph inputs and outputs without a type or shape."""
    for g, _ in iter_graphs(model.graph):
        seen: set[str] = set()
        for node in g.node:
            if node.name and node.name in seen:
                raise _fail(
                    path,
                    f"node name {node.name!r} is used by more than one node in graph {g.name!r} (ONNX requires "
                    "unique node names)",
                )
            seen.add(node.name)
    for kind in ("input", "output"):
        for value in getattr(model.graph, kind):
            if not value.type.HasField("tensor_type"):
                continue  # sequences, maps, optionals: the checker's to judge
            tensor = value.type.tensor_type
            if not tensor.elem_type:
                raise _fail(path, f"graph {kind} {value.name!r} has no element type")
            if not tensor.HasField("shape"):
                raise _fail(
                    path,
                    f"graph {kind} {value.name!r} has no shape (ONNX requires one for graph inputs and outputs; its "
                    "dimensions may be unknown)",
                )


def load_model(path: str | os.PathLike, *, check: bool = True, load_external: bool = True) -> LoadedModel:
    """Read a model and its external data, refusing unsafe or invalid input (exit 2).

    With ``load_external=False`` external data stays on disk (every location is still checked): read
    tensors with ``WeightTensor.array()`` inside ``onnxshrink.ir.external.external_data_dir(model folder)``.
    """
    p = Path(path)
    model = read_model_proto(p)
    for tensor in stored_tensors(model):
        _check_inline_data(p, tensor)
    references = _external_references(model, p)
    files = sorted({target for target, _ in references})
    # loading reads all external data; editing lazily still reads one tensor at a time
    _check_memory(p, model, references if load_external else sorted(references, key=lambda r: r[1])[-1:])
    sparse = next(
        (
            t
            for item in stored_items(model)
            if isinstance(item, onnx.SparseTensorProto)
            for t in (item.values, item.indices)
            if t.data_location == _T.EXTERNAL
        ),
        None,
    )
    if sparse is not None:  # onnx does not load those; onnxruntime would read them later, unchecked
        raise _fail(p, f"tensor {sparse.name!r}: external data is not supported in this place (sparse tensor)")
    if files and load_external:
        try:
            external_data_helper.load_external_data_for_model(model, str(p.resolve().parent))
        except Exception as exc:  # noqa: BLE001 - onnx raises several types here
            raise _fail(p, f"cannot read external data: {exc}") from None
        left = next((t for t in stored_tensors(model) if t.data_location == _T.EXTERNAL), None)
        if left is not None:  # e.g. a sparse tensor: onnx does not load those, onnxruntime would read it later
            raise _fail(
                p, f"tensor {left.name!r}: external data is not supported in this place (sparse tensor or the like)"
            )
    if check:
        try:
            onnx.checker.check_model(str(p))
        except Exception as exc:  # noqa: BLE001 - ValidationError and friends
            raise _fail(p, f"invalid ONNX model: {one_line(exc)}") from None
    return LoadedModel(p, model, files, external_bytes=sum(length for _, length in references))


def default_output_path(input_path: str | os.PathLike) -> Path:
    """``<stem>.shrunk.onnx`` beside the input."""
    p = Path(input_path)
    return p.with_name(f"{p.stem}.shrunk.onnx")


def check_output_path(output: str | os.PathLike, inputs: list[Path]) -> Path:
    """Refuse an output that is the input or one of its data files (also via symlinks or hard links)."""
    out = Path(output)
    if out.exists() and out.is_dir():
        raise UsageError(f"output {out} is a folder; give a file path ending in .onnx")
    data = out.with_name(out.name + ".data")
    for candidate in (out, data):
        for src in inputs:
            if _same_file(candidate, src):
                raise UsageError(f"output {candidate} is the input {src}; choose another output path")
    _check_writable_folder(out)
    return out


def check_writable_file(path: str | os.PathLike) -> Path:
    """Refuse, before any work, a report or output path that is a folder or whose folder is not writable."""
    out = Path(path)
    if out.is_dir():
        raise UsageError(f"cannot write {out}: it is a folder")
    _check_writable_folder(out)
    return out


def _check_writable_folder(out: Path) -> None:
    """The output's folder (or the nearest one that exists, for folders still to create) must be a
    writable folder: checked before any method runs, so a long run does not end in "cannot write"."""
    folder = out.parent if str(out.parent) else Path(".")
    existing = next((p for p in (folder, *folder.parents) if p.exists() or p.is_symlink()), Path("."))
    if not existing.is_dir():
        raise UsageError(f"cannot write {out}: {existing} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write {out}: folder {existing} is not writable")


def _commit(tmpdir: Path, finals: list[Path]) -> None:
    """Move the written files from ``tmpdir`` into place, data first so the model never points at a
    missing file. Any failure on the way, an interrupt included, puts back what was there before: a
    new data file next to an old model (or the reverse) is never left behind."""
    backups: dict[Path, Path] = {}
    placed: list[Path] = []
    try:
        for final in finals:
            if len(finals) > 1 and final.is_file():
                backup = tmpdir / f"{final.name}.previous"
                try:
                    os.link(final, backup)
                except OSError:  # a file system without hard links
                    shutil.copy2(final, backup)
                backups[final] = backup
        for final in finals:
            os.replace(tmpdir / final.name, final)
            placed.append(final)
    except BaseException:
        for final in placed:
            if final in backups:
                os.replace(backups[final], final)
            else:
                final.unlink(missing_ok=True)
        raise


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        return False
    return a.resolve() == b.resolve()


def save_model(
    model: onnx.ModelProto,
    output: str | os.PathLike,
    *,
    external_data: bool | None = None,
    progress: Callable[[int], contextlib.AbstractContextManager[Any]] | None = None,
) -> list[Path]:
    """Write ``model`` atomically; return the files written.

    ``external_data=None`` chooses external data when the model still refers to external data (a model
    loaded with ``load_external=False``) or would pass protobuf's 2 GB limit. The data file is
    ``<output name>.data`` beside it, written by streaming (see :mod:`onnxshrink.ir.external`); the model's
    tensors then point at it. ``progress(total_bytes)``, when given, opens a task advanced as the data
    file is written. Any failure removes temporary files and leaves what was at ``output`` before
    untouched.
    """
    out = Path(output)
    folder = out.parent if str(out.parent) else Path(".")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create output folder {folder}: {exc.strerror or exc}") from None
    if external_data is None:
        external_data = bool(external_tensors(model)) or inline_bytes(model) > PROTOBUF_LIMIT - 64 * 2**20
    tmpdir = None
    try:
        tmpdir = Path(tempfile.mkdtemp(prefix=".onnxshrink-", dir=folder))
        if external_data:
            data_name = out.name + ".data"
            with progress(planned_data_bytes(model)) if progress else contextlib.nullcontext() as task:
                wrote_data = write_with_external_data(
                    model, tmpdir / out.name, data_name, task.advance if task else None
                )
            written = [folder / data_name, out] if wrote_data else [out]
        else:
            with open(tmpdir / out.name, "wb") as fh:
                fh.write(model.SerializeToString(deterministic=True))
                fh.flush()
                os.fsync(fh.fileno())
            written = [out]
        _commit(tmpdir, written)
        return written
    except OSError as exc:
        raise UsageError(f"cannot write {out}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise UsageError(f"cannot write {out}: {exc}") from None
    finally:
        if tmpdir is not None:
            shutil.rmtree(tmpdir, ignore_errors=True)
