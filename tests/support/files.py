"""Where things are, and what is on disk: the repository, its models, digests and snapshots of folders,
models saved inline or with external data."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import onnx

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "models"


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def folder_digest(folder: Path) -> dict[str, str]:
    """Name → sha256 of every file in a folder (to assert nothing changed or appeared)."""
    return {p.name: sha256(p) for p in sorted(Path(folder).iterdir()) if p.is_file()}


def snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root``: sha256 of files (size only for huge sparse ones), link targets, folders."""
    out: dict[str, str] = {}
    for folder, dirs, files in os.walk(root, followlinks=False):
        for name in sorted(dirs + files):
            path = Path(folder) / name
            key = str(path.relative_to(root))
            if path.is_symlink():
                out[key] = "-> " + os.readlink(path)
            elif path.is_dir():
                out[key] = "folder"
            elif path.stat().st_size > 64 * 2**20:
                out[key] = f"{path.stat().st_size} bytes"
            else:
                out[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def save(model: onnx.ModelProto, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString())
    return path


def save_external(model: onnx.ModelProto, path: Path, location: str = "weights.bin") -> Path:
    onnx.save_model(
        model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=location, size_threshold=0
    )
    return path
