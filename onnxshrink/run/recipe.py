"""TOML recipes: a whole shrink run (chain, data, validation, gates, outputs) kept in the repository.

``load_recipe(path)`` reads and checks every key before anything runs: an unknown key, a wrong type,
a bad gate expression, a missing file or invalid TOML is a UsageError (exit 2) whose message names the
recipe file and the key path (``steps[1].plugin``, ``gate.checks[2]``; indexes count from 0).
Relative paths in a recipe resolve against the recipe's folder, so ``onnxshrink --recipe ci/shrink.toml``
works from any working directory.

``merge_cli(recipe, overrides)`` puts command-line values on top: a value that is not None replaces
the recipe's. A non-empty ``--plugin`` list replaces the recipe's whole chain, and non-empty ``--gate``
checks replace the recipe's checks (replacing, never appending, so what runs is what you see on one
line). Command-line paths are taken as given (relative to the working directory).

Example (docs/gate.md has the full reference)::

    model = "models/cnn.onnx"
    output = "out/cnn.small.onnx"
    seed = 0

    [[steps]]
    plugin = "weight_prune"
    options = { sparsity = 0.5, scope = "global" }

    [data]
    path = "models/cnn_eval.npz"
    input_shapes = { input = [1, 1, 8, 8] }

    [validate]
    enabled = true
    providers = ["cpu", "cuda"]
    threads = 1
    repeats = 20

    [gate]
    checks = ["size_ratio <= 0.5", "latency_ratio[cpu] <= 1.0", "top1_agreement >= 0.99"]
    allow_unavailable = false
    strict_latency = false

    [report]
    json = "out/report.json"
    junit = "out/gate.xml"
    markdown = "out/summary.md"
    html = "out/report.html"
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onnxshrink.errors import InternalError, UsageError
from onnxshrink.plugin.method import PluginSpec
from onnxshrink.validate.gate import PROVIDERS, GateCheck, parse_gate

__all__ = ["Recipe", "RecipeStep", "load_recipe", "merge_cli", "RECIPE_KEYS", "OVERRIDE_KEYS"]


# One ``[[steps]]`` entry. Option values keep their TOML types; the plugin validates them.
RecipeStep = PluginSpec


@dataclass
class Recipe:
    """A whole run. Paths are resolved against the recipe's folder; defaults match the CLI's."""

    path: Path | None = None  # the recipe file (None for a recipe built in code)
    model: Path | None = None
    output: Path | None = None
    seed: int = 0
    steps: list[RecipeStep] = field(default_factory=list)
    data_path: Path | None = None
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    validate: bool = True
    providers: list[str] = field(default_factory=lambda: ["cpu"])
    threads: int = 1
    repeats: int = 20
    gates: list[str] = field(default_factory=list)  # expressions, already checked by parse_gate
    allow_unavailable: bool = False
    strict_latency: bool = False
    report_json: Path | None = None
    junit: Path | None = None
    markdown: Path | None = None
    html: Path | None = None

    @property
    def gate_checks(self) -> list[GateCheck]:
        """The gate expressions, parsed."""
        return [parse_gate(g) for g in self.gates]


# The schema: table → key → expected TOML type. Anything else is an unknown key.
RECIPE_KEYS: dict[str, dict[str, str]] = {
    "": {
        "model": "string",
        "output": "string",
        "seed": "integer",
        "steps": "array",
        "data": "table",
        "validate": "table",
        "gate": "table",
        "report": "table",
    },
    "steps[]": {"plugin": "string", "options": "table"},
    "data": {"path": "string", "input_shapes": "table"},
    "validate": {"enabled": "boolean", "providers": "array", "threads": "integer", "repeats": "integer"},
    "gate": {"checks": "array", "allow_unavailable": "boolean", "strict_latency": "boolean"},
    "report": {"json": "string", "junit": "string", "markdown": "string", "html": "string"},
}


def _toml_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "table"
    return type(value).__name__  # dates and times


class _Checker:
    """Type and key checks that name the recipe file and the key path."""

    def __init__(self, path: Path):
        self.path = path
        self.base = path.parent

    def error(self, key: str, message: str) -> UsageError:
        return UsageError(f"recipe {self.path}: {key}: {message}")

    def expect(self, value: Any, expected: str, key: str) -> Any:
        got = _toml_type(value)
        if got != expected:
            shown = repr(value)
            shown = shown if len(shown) <= 40 else shown[:37] + "..."
            hint = " (write each step as a [[steps]] table)" if key == "steps" and got == "table" else ""
            raise self.error(key, f"expected {expected}, got {got} ({shown}){hint}")
        return value

    def table(self, data: Any, schema_name: str, key: str) -> dict[str, Any]:
        self.expect(data, "table", key or "recipe")
        schema = RECIPE_KEYS[schema_name]
        for name, value in data.items():
            where = f"{key}.{name}" if key else name
            if name not in schema:
                known = ", ".join(schema)
                place = f"[{key}]" if key else "the top level"
                raise UsageError(f"recipe {self.path}: unknown key {where!r}; known keys in {place}: {known}")
            self.expect(value, schema[name], where)
        return data

    def count(self, value: int, key: str, minimum: int) -> int:
        if value < minimum:
            raise self.error(key, f"must be >= {minimum}, got {value}")
        return value

    def path_value(self, value: str, key: str) -> Path:
        if not value.strip():
            raise self.error(key, "must not be empty")
        path = Path(value).expanduser()
        return path if path.is_absolute() else self.base / path


def _read_toml(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise UsageError(f"recipe file not found: {path}")
    if path.is_dir():
        raise UsageError(f"recipe {path} is a directory, not a TOML file")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read recipe {path}: {exc.strerror or exc}") from None
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise UsageError(f"recipe {path}: not UTF-8 text (byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"recipe {path}: invalid TOML: {exc}") from None


def load_recipe(path: str | os.PathLike[str]) -> Recipe:
    """Read and check a TOML recipe; every problem is a UsageError naming the file and the key."""
    path = Path(path)
    data = _read_toml(path)
    c = _Checker(path)
    c.table(data, "", "")
    recipe = Recipe(path=path)

    if "model" in data:
        recipe.model = c.path_value(data["model"], "model")
    if "output" in data:
        recipe.output = c.path_value(data["output"], "output")
    if "seed" in data:
        recipe.seed = c.count(data["seed"], "seed", 0)

    for i, step in enumerate(data.get("steps", [])):
        key = f"steps[{i}]"
        c.table(step, "steps[]", key)
        if "plugin" not in step:
            raise c.error(key, "missing required key 'plugin'")
        plugin = step["plugin"].strip()
        if not plugin:
            raise c.error(f"{key}.plugin", "must not be empty")
        recipe.steps.append(RecipeStep(plugin, dict(step.get("options", {}))))

    if "data" in data:
        table = c.table(data["data"], "data", "data")
        if "path" in table:
            recipe.data_path = c.path_value(table["path"], "data.path")
        for name, dims in table.get("input_shapes", {}).items():
            key = f"data.input_shapes.{name}"
            c.expect(dims, "array", key)
            for j, dim in enumerate(dims):
                c.expect(dim, "integer", f"{key}[{j}]")
                c.count(dim, f"{key}[{j}]", 1)
            recipe.input_shapes[name] = tuple(dims)

    if "validate" in data:
        table = c.table(data["validate"], "validate", "validate")
        recipe.validate = table.get("enabled", True)
        if "providers" in table:
            providers: list[str] = []
            for j, name in enumerate(table["providers"]):
                key = f"validate.providers[{j}]"
                c.expect(name, "string", key)
                name = name.strip().lower()
                if name not in PROVIDERS:
                    raise c.error(key, f"unknown provider {name!r}; known providers: {', '.join(PROVIDERS)}")
                if name in providers:
                    raise c.error(key, f"provider {name!r} is listed twice")
                providers.append(name)
            if not providers:
                raise c.error("validate.providers", f"must name at least one provider ({', '.join(PROVIDERS)})")
            recipe.providers = providers
        if "threads" in table:
            recipe.threads = c.count(table["threads"], "validate.threads", 1)
        if "repeats" in table:
            recipe.repeats = c.count(table["repeats"], "validate.repeats", 1)

    if "gate" in data:
        table = c.table(data["gate"], "gate", "gate")
        for j, expr in enumerate(table.get("checks", [])):
            key = f"gate.checks[{j}]"
            c.expect(expr, "string", key)
            try:
                parse_gate(expr)
            except UsageError as exc:
                raise c.error(key, exc.message) from None
            recipe.gates.append(expr.strip())
        recipe.allow_unavailable = table.get("allow_unavailable", False)
        recipe.strict_latency = table.get("strict_latency", False)

    if "report" in data:
        table = c.table(data["report"], "report", "report")
        for name, attr in (("json", "report_json"), ("junit", "junit"), ("markdown", "markdown"), ("html", "html")):
            if name in table:
                setattr(recipe, attr, c.path_value(table[name], f"report.{name}"))

    return recipe


# --------------------------------------------------------------------------- command-line overrides

# Override key → Recipe field. ``data`` is the CLI's name for ``data_path``.
OVERRIDE_KEYS: dict[str, str] = {
    "model": "model",
    "steps": "steps",
    "output": "output",
    "seed": "seed",
    "data": "data_path",
    "data_path": "data_path",
    "input_shapes": "input_shapes",
    "providers": "providers",
    "threads": "threads",
    "repeats": "repeats",
    "validate": "validate",
    "gates": "gates",
    "allow_unavailable": "allow_unavailable",
    "strict_latency": "strict_latency",
    "report_json": "report_json",
    "junit": "junit",
    "markdown": "markdown",
    "html": "html",
}

_PATH_FIELDS = {"model", "output", "data_path", "report_json", "junit", "markdown", "html"}


def _as_step(item: Any) -> RecipeStep:
    """A RecipeStep from a RecipeStep, a PluginSpec-like object (``name``, ``options``), a name or a pair."""
    if isinstance(item, RecipeStep):
        return item
    if isinstance(item, str):
        return RecipeStep(item, {})
    if isinstance(item, tuple) and len(item) == 2:
        return RecipeStep(str(item[0]), dict(item[1] or {}))
    name = getattr(item, "plugin", None) or getattr(item, "name", None)
    options = getattr(item, "options", None)
    if isinstance(name, str) and (options is None or isinstance(options, Mapping)):
        return RecipeStep(name, dict(options or {}))
    raise InternalError(f"merge_cli: cannot use {item!r} as a step")


def merge_cli(recipe: Recipe, overrides: Mapping[str, Any]) -> Recipe:
    """A new Recipe with the command-line values on top; ``None`` means "not given on the command line".

    ``steps`` (the ``--plugin`` list) and ``gates`` (the ``--gate`` list) replace the recipe's when
    they are non-empty; an empty list keeps the recipe's. Gate expressions are parsed here, so a bad
    ``--gate`` fails before anything runs. The input recipe is not modified.
    """
    changes: dict[str, Any] = {}
    for key, value in overrides.items():
        if key not in OVERRIDE_KEYS:
            raise InternalError(f"merge_cli: unknown override {key!r}; known: {', '.join(OVERRIDE_KEYS)}")
        if value is None:
            continue
        name = OVERRIDE_KEYS[key]
        if name == "steps":
            if not value:
                continue
            value = [_as_step(s) for s in value]
        elif name == "gates":
            if not value:
                continue
            value = [parse_gate(g).expr for g in value]
        elif name in _PATH_FIELDS:
            value = Path(value)
        elif name == "input_shapes":
            value = {k: tuple(v) for k, v in dict(value).items()}
        elif name == "providers":
            value = list(value)
        changes[name] = value
    merged = dataclasses.replace(
        recipe,
        steps=list(recipe.steps),
        input_shapes=dict(recipe.input_shapes),
        providers=list(recipe.providers),
        gates=list(recipe.gates),
    )
    return dataclasses.replace(merged, **changes)
