"""Safe model loading and atomic saving.

Loading refuses what could read outside the model's folder or is not a usable ONNX model, with one
line naming the file. Saving never touches the input, writes atomically (temporary file in the target
folder, then ``os.replace``) and names external-data files deterministically.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError
from onnx import external_data_helper

from .errors import InvalidModelError, UsageError
from .graph import iter_tensors

PROTOBUF_LIMIT = 2**31 - 1
EXTERNAL_THRESHOLD = 1024  # tensors smaller than this stay inside the .onnx when saving externally


@dataclass
class LoadedModel:
    """A model read from disk, with its external data loaded into memory."""

    path: Path
    model: onnx.ModelProto
    external_files: list[Path] = field(default_factory=list)

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
        with open(p, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise _fail(p, f"cannot read: {exc.strerror or exc}") from None
    if size == 0:
        raise _fail(p, "empty file, not an ONNX model")
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise _fail(p, f"not a valid ONNX protobuf (truncated or another format): {exc}") from None
    if not model.HasField("graph") or model.ir_version == 0:
        raise _fail(p, "not an ONNX model (no graph or IR version; truncated or another format)")
    _check_versions(p, model)
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
    path = Path(model_path)
    base = path.resolve().parent
    files: set[Path] = set()
    for tensor in iter_tensors(model.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {entry.key: entry.value for entry in tensor.external_data}
        location = info.get("location", "")
        where = f"tensor {tensor.name!r}"
        if not location:
            raise _fail(path, f"{where} has external data without a location")
        if os.path.isabs(location) or location.startswith(("/", "\\")) or (len(location) > 1 and location[1] == ":"):
            raise _fail(path, f"{where}: external data location {location!r} is absolute; only paths inside the model's folder are allowed")
        target = (base / location).resolve()
        if target != base and base not in target.parents:
            raise _fail(path, f"{where}: external data location {location!r} leaves the model's folder")
        if not target.is_file():
            raise _fail(path, f"{where}: external data file {location!r} is missing")
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
                f"{where}: external data {location!r} is too short: needs bytes {offset}..{offset + length}, file has {file_size}",
            )
        expected = _expected_nbytes(tensor)
        if expected is not None and length != expected:
            raise _fail(path, f"{where}: external data length {length} does not match its shape and type ({expected} bytes)")
        files.add(target)
    return sorted(files)


def _expected_nbytes(tensor: onnx.TensorProto) -> int | None:
    try:
        np_dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)
    except (KeyError, ValueError, TypeError):
        return None
    count = 1
    for d in tensor.dims:
        count *= int(d)
    bits = {onnx.TensorProto.INT4: 4, onnx.TensorProto.UINT4: 4}.get(tensor.data_type)
    if bits is None and hasattr(onnx.TensorProto, "INT2"):
        bits = {getattr(onnx.TensorProto, "INT2"): 2, getattr(onnx.TensorProto, "UINT2"): 2}.get(tensor.data_type)
    if bits is not None:
        return (count * bits + 7) // 8
    if tensor.data_type == onnx.TensorProto.STRING:
        return None
    return count * int(getattr(np_dtype, "itemsize", 0) or 0) or None


def load_model(path: str | os.PathLike, *, check: bool = True) -> LoadedModel:
    """Read a model and its external data, refusing unsafe or invalid input (exit 2)."""
    p = Path(path)
    model = read_model_proto(p)
    files = external_data_files(model, p)
    if files:
        try:
            external_data_helper.load_external_data_for_model(model, str(p.resolve().parent))
        except Exception as exc:  # noqa: BLE001 - onnx raises several types here
            raise _fail(p, f"cannot read external data: {exc}") from None
    if check:
        try:
            onnx.checker.check_model(str(p))
        except Exception as exc:  # noqa: BLE001 - ValidationError and friends
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise _fail(p, f"invalid ONNX model: {first}") from None
    return LoadedModel(p, model, files)


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
    return out


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        return False
    return a.resolve() == b.resolve()


def tensor_bytes(model: onnx.ModelProto) -> int:
    """Bytes of tensor data held in the proto."""
    return sum(len(t.raw_data) for t in iter_tensors(model.graph))


def save_model(model: onnx.ModelProto, output: str | os.PathLike, *, external_data: bool | None = None) -> list[Path]:
    """Write ``model`` atomically; return the files written.

    ``external_data=None`` chooses external data only when the model would pass protobuf's 2 GB limit.
    The data file is ``<output name>.data`` beside it. Any failure removes temporary files and leaves
    what was at ``output`` before untouched.
    """
    out = Path(output)
    folder = out.parent if str(out.parent) else Path(".")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create output folder {folder}: {exc.strerror or exc}") from None
    if external_data is None:
        external_data = tensor_bytes(model) > PROTOBUF_LIMIT - 64 * 2**20
    tmpdir = None
    try:
        tmpdir = Path(tempfile.mkdtemp(prefix=".onnxshrink-", dir=folder))
        if external_data:
            data_name = out.name + ".data"
            proto = onnx.ModelProto()
            proto.CopyFrom(model)
            onnx.save_model(
                proto,
                str(tmpdir / out.name),
                save_as_external_data=True,
                all_tensors_to_one_file=True,
                location=data_name,
                size_threshold=EXTERNAL_THRESHOLD,
            )
            written = [folder / data_name, out] if (tmpdir / data_name).exists() else [out]
        else:
            with open(tmpdir / out.name, "wb") as fh:
                fh.write(model.SerializeToString(deterministic=True))
                fh.flush()
                os.fsync(fh.fileno())
            written = [out]
        for final in written:  # data first, so the model never points at a missing file
            os.replace(tmpdir / final.name, final)
        return written
    except OSError as exc:
        raise UsageError(f"cannot write {out}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise UsageError(f"cannot write {out}: {exc}") from None
    finally:
        if tmpdir is not None:
            shutil.rmtree(tmpdir, ignore_errors=True)
