"""``--save-recipe best.toml``: the chosen trial as a recipe that ``onnxshrink --recipe`` rebuilds.

The recipe holds the model, the output, the seed, the chain with its options, the data (methods
calibrate on its first half, exactly as in the trial) and the gates, so the rebuild is byte-identical
to the chosen model and checks the same gate. Paths are written relative to the recipe's folder.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from onnxshrink.errors import InternalError


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InternalError(f"cannot write {value!r} in a recipe")
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string is a JSON string for these characters
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise InternalError(f"cannot write {value!r} ({type(value).__name__}) in a recipe")


def _inline_table(mapping: dict[str, Any]) -> str:
    return (
        "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in mapping.items() if v is not None) + " }"
        if mapping
        else "{}"
    )


def _relative(path: Path, folder: Path) -> str:
    path = Path(path).resolve()
    try:
        return os.path.relpath(path, folder.resolve())
    except ValueError:  # another drive on Windows
        return str(path)


def recipe_text(
    recipe_path: Path,
    *,
    model: Path,
    output: Path,
    seed: int,
    chain: list[dict[str, Any]],
    data: Path | None,
    input_shapes: dict[str, Any],
    gates: list[str],
    trial: int,
) -> str:
    folder = Path(recipe_path).parent
    lines = [
        f"# onnxshrink tune: trial {trial}, the smallest model that passed every gate.",
        "# Rebuild (byte-identical) and re-check the gate: onnxshrink --recipe " + Path(recipe_path).name,
        f"model = {_toml_value(_relative(model, folder))}",
        f"output = {_toml_value(_relative(output, folder))}",
        f"seed = {seed}",
        "",
    ]
    for step in chain:
        lines += [
            "[[steps]]",
            f"plugin = {_toml_value(step['plugin'])}",
            f"options = {_inline_table(step['options'])}",
            "",
        ]
    if data is not None or input_shapes:
        lines.append("[data]")
        if data is not None:
            lines.append(f"path = {_toml_value(_relative(data, folder))}")
        if input_shapes:
            lines.append(f"input_shapes = {_inline_table({k: list(v) for k, v in input_shapes.items()})}")
        lines.append("")
    if gates:
        lines += ["[gate]", f"checks = {_toml_value(list(gates))}", ""]
    return "\n".join(lines)


def save_recipe(recipe_path: Path, **fields: Any) -> None:
    path = Path(recipe_path)
    text = recipe_text(path, **fields)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
