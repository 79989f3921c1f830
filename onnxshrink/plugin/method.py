"""The method API: what a plugin implements to add a compression method.

A method is a small class with a ``name``, a ``kind``, typed ``options`` and an ``apply`` step that
edits an ``onnx.ModelProto`` in place and returns JSON-serialisable stats.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import onnx

from onnxshrink.errors import UsageError
from onnxshrink.plugin.context import Context
from onnxshrink.toolkit.weights import unknown_exclusions

_T = TypeVar("_T")
KINDS = ("quantize", "prune", "transform")
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
_TYPE_NAMES = {float: "float", int: "int", bool: "bool", str: "str", list: "list"}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclass(frozen=True)
class Option:
    """A typed, documented method option.

    ``type`` is one of ``float``, ``int``, ``bool``, ``str`` or ``list`` (a list of strings, spelled
    ``[a,b]`` on the command line). A ``default`` of ``None`` means "not set". ``choices`` restricts
    the allowed values; ``min``/``max`` bound numbers (inclusive). ``only_with`` declares when the
    option applies, e.g. ``{"mode": ("static", "auto")}``: giving the option while another option has
    a value outside those listed is a usage error (every key must hold; the check runs before
    :meth:`Method.check_options`). It is stored as ``((option, (value, ...)), ...)``.
    """

    name: str
    type: type
    default: Any
    doc: str
    choices: tuple[Any, ...] | None = None
    min: float | None = None
    max: float | None = None
    only_with: Mapping[str, Any] | tuple[tuple[str, tuple[Any, ...]], ...] | None = None

    def __post_init__(self) -> None:
        if self.only_with is not None:
            pairs = self.only_with.items() if isinstance(self.only_with, Mapping) else self.only_with
            frozen = tuple((str(k), tuple(v) if isinstance(v, (list, tuple)) else (v,)) for k, v in pairs)
            object.__setattr__(self, "only_with", frozen or None)

    @property
    def type_name(self) -> str:
        return _TYPE_NAMES.get(self.type, getattr(self.type, "__name__", str(self.type)))

    def condition(self) -> str:
        """``only_with`` in words (``mode=static or auto and calibration=percentile``); "" when unset."""
        return " and ".join(
            f"{key}=" + " or ".join(_value_text(v) for v in allowed) for key, allowed in self.only_with or ()
        )

    def unmet_condition(self, values: Mapping[str, Any]) -> str | None:
        """The first ``only_with`` key whose value in ``values`` is not allowed, or None."""
        return next((key for key, allowed in self.only_with or () if values.get(key) not in allowed), None)

    def describe(self) -> dict[str, Any]:
        """A JSON-ready description (for ``onnxshrink plugins --json`` and docs)."""
        out: dict[str, Any] = {"name": self.name, "type": self.type_name, "default": self.default, "doc": self.doc}
        if self.choices is not None:
            out["choices"] = list(self.choices)
        if self.min is not None:
            out["min"] = self.min
        if self.max is not None:
            out["max"] = self.max
        if self.only_with:
            out["only_with"] = {key: list(allowed) for key, allowed in self.only_with}
            out["condition"] = self.condition()
        return out

    def parse(self, raw: Any, where: str) -> Any:
        """Convert a CLI string or a recipe value to this option's type, or raise UsageError."""
        value = self._convert(raw, where)
        if value is None:
            return None
        if self.choices is not None:
            bad = [v for v in (value if isinstance(value, list) else [value]) if v not in self.choices]
            if bad:
                allowed = ", ".join(str(c) for c in self.choices)
                raise UsageError(f"{where}: option {self.name!r} must be one of {allowed} (got {bad[0]!r})")
        if self.type in (int, float):
            if self.min is not None and value < self.min or self.max is not None and value > self.max:
                raise UsageError(f"{where}: option {self.name!r} must be {self._bounds()} (got {value})")
        return value

    def _bounds(self) -> str:
        if self.min is not None and self.max is not None:
            return f"between {self.min} and {self.max}"
        return f">= {self.min}" if self.min is not None else f"<= {self.max}"

    def _convert(self, raw: Any, where: str) -> Any:
        expected = f"{where}: option {self.name!r} expects {self.type_name}"
        if isinstance(raw, str) and raw.strip().lower() == "none" and self.default is None:
            return None
        try:
            if self.type is bool:
                if isinstance(raw, bool):
                    return raw
                text = str(raw).strip().lower()
                if text in _TRUE:
                    return True
                if text in _FALSE:
                    return False
                raise ValueError(raw)
            if self.type is int:
                if isinstance(raw, bool) or isinstance(raw, float) and not raw.is_integer():
                    raise ValueError(raw)
                return int(raw)
            if self.type is float:
                if isinstance(raw, bool):
                    raise ValueError(raw)
                value = float(raw)
                if not math.isfinite(value):
                    raise ValueError(raw)
                return value
            if self.type is list:
                if isinstance(raw, (list, tuple)):
                    return [str(v) for v in raw]
                text = str(raw).strip()
                if text.startswith("[") and text.endswith("]"):
                    text = text[1:-1]
                return [part.strip() for part in text.split(",") if part.strip()]
            if self.type is str:
                if not isinstance(raw, (str, int, float)) or isinstance(raw, bool):
                    raise ValueError(raw)
                return str(raw)
        except (TypeError, ValueError):
            raise UsageError(f"{expected} (got {raw!r})") from None
        raise UsageError(f"{where}: option {self.name!r} has unsupported type {self.type!r}")


TUNABLE_WHERE = ("space", "default", "both")


@dataclass(frozen=True)
class Tunable:
    """One option worth searching (``onnxshrink tune``) and its range.

    Either ``choices`` (values tried as categories) or ``low``/``high`` (numbers; ``step`` makes the
    range discrete, ``log`` samples it on a log scale). The values must be valid for the option.

    ``where`` says in which chains the option is searched: ``"space"`` (the default) when the method
    runs with its searched options (chain element ``NAME``), ``"default"`` only when it runs at its
    own defaults (``NAME:default``, e.g. a fidelity target that only its default mode reads),
    ``"both"`` in either.
    """

    option: str
    choices: tuple[Any, ...] | None = None
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    where: str = "space"

    def describe(self) -> dict[str, Any]:
        """A JSON-ready description (``onnxshrink plugins --json``, tune reports)."""
        if self.choices is not None:
            out: dict[str, Any] = {"option": self.option, "choices": list(self.choices)}
        else:
            out = {"option": self.option, "low": self.low, "high": self.high}
            if self.step is not None:
                out["step"] = self.step
            if self.log:
                out["log"] = True
        if self.where != "space":
            out["where"] = self.where
        return out


def _value_text(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) or value is None else str(value)


class Options(dict):
    """The validated options of one method step: what :meth:`Method.apply` receives.

    Read-only, with attribute access (``options.bits``) and the mapping interface of a dict
    (``options["bits"]``, ``options.get``, ``dict(options)``, iteration, ``==`` against a dict), so code
    written for a plain dict keeps working; it is a ``dict`` subclass, so JSON and reports see the
    same dict as before. Writing raises ``TypeError``; :meth:`replace` returns a changed copy and
    ``dict(options)`` a mutable one. Reading an option the method does not declare raises
    ``AttributeError`` naming the option and the method. An option named like a dict method
    (``keys``, ``items``, ``get``, ``copy``, ...), ``replace`` or ``into`` is read as ``options["keys"]``.
    """

    __slots__ = ("_method",)

    def __init__(self, values: Mapping[str, Any] | None = None, method: str = "") -> None:
        dict.__init__(self, values or {})
        object.__setattr__(self, "_method", method)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self[name]
        except KeyError:
            known = ", ".join(sorted(self)) or "(none)"
            raise AttributeError(f"method {self._method!r} has no option {name!r}; known options: {known}") from None

    def replace(self, **changes: Any) -> Options:
        """A copy with ``changes`` applied (names must be options of the method)."""
        for name in changes:
            if name not in self:
                getattr(self, name)  # AttributeError naming the option and the method
        return Options({**self, **changes}, self._method)

    def into(self, cls: type[_T], **fields: Any) -> _T:
        """Build the dataclass ``cls`` from the options named like its fields, ``fields`` on top (for
        settings objects: no hand copy of every option)."""
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        return cls(**{**{k: v for k, v in self.items() if k in names}, **fields})

    def _read_only(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            f"the options of method {self._method!r} are read-only; use options.replace(...) or dict(options)"
        )

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = __ior__ = _read_only  # type: ignore[assignment]

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"the options of method {self._method!r} are read-only; use options.replace({name}=...)")

    def __delattr__(self, name: str) -> None:
        self.__setattr__(name, None)

    def __reduce__(self) -> tuple[Any, ...]:
        return (Options, (dict(self), self._method))

    def __repr__(self) -> str:
        return f"Options({dict.__repr__(self)}, method={self._method!r})"


class Method:
    """Base class of every compression method.

    Subclasses set ``name`` (lowercase, ``[a-z][a-z0-9_]*``), ``kind`` (``quantize``, ``prune`` or
    ``transform``), ``options`` and a docstring whose first line is the one-line summary, and implement
    :meth:`apply`. Override :meth:`check_options` for rules that involve several options.
    """

    name: ClassVar[str] = ""
    kind: ClassVar[str] = ""
    options: ClassVar[tuple[Option, ...]] = ()
    # The options ``onnxshrink tune`` searches (empty: tune leaves the method out). Options not
    # listed keep their defaults, or the values in ``search_fixed``.
    search_space: ClassVar[tuple[Tunable, ...]] = ()
    search_fixed: ClassVar[dict[str, Any]] = {}
    # True when the method never changes the model's outputs (bit-identical, e.g. renaming):
    # ``onnxshrink tune`` appends lossless methods to every chain it tries.
    lossless: ClassVar[bool] = False

    @classmethod
    def summary(cls) -> str:
        doc = (cls.__doc__ or "").strip()
        return doc.splitlines()[0].strip() if doc else ""

    @classmethod
    def option(cls, name: str) -> Option | None:
        return next((o for o in cls.options if o.name == name), None)

    @classmethod
    def validate_options(cls, raw: Mapping[str, Any]) -> Options:
        """Return every option with its typed value (defaults filled in) as :class:`Options`, or raise
        UsageError: unknown names, bad values, an option given outside its ``only_with`` condition, or
        what :meth:`check_options` rejects."""
        where = f"plugin {cls.name!r}"
        known = {o.name for o in cls.options}
        for key in raw:
            if key not in known:
                listing = ", ".join(sorted(known)) or "(none)"
                raise UsageError(f"{where}: unknown option {key!r}; known options: {listing}")
        values = Options(
            {o.name: (o.parse(raw[o.name], where) if o.name in raw else o.default) for o in cls.options}, cls.name
        )
        for opt in cls.options:
            unmet = opt.unmet_condition(values) if opt.name in raw else None
            if unmet is not None:
                raise UsageError(
                    f"{where}: option {opt.name!r} only applies to {opt.condition()} "
                    f"({unmet}={_value_text(values[unmet])})"
                )
        cls.check_options(values, given=set(raw))
        return values

    @classmethod
    def check_options(cls, values: Options, given: set[str]) -> None:
        """Cross-option validation beyond ``Option.only_with``; raise ``UsageError`` (use :meth:`option_error`)."""

    @classmethod
    def not_applicable(cls, model: onnx.ModelProto) -> str | None:
        """Why this method can change nothing in ``model``, nor in a pruned copy of it (e.g. a
        quantizer on a model already quantized), or None. A cheap look at the graph: tensor data may
        be external and not loaded. ``onnxshrink tune`` (whose chains put only pruning in front of
        another method) leaves such a method out of its search; return None when unsure."""
        return None

    @classmethod
    def option_error(cls, message: str) -> UsageError:
        return UsageError(f"plugin {cls.name!r}: {message}")

    @classmethod
    def check_exclude(cls, model: onnx.ModelProto, exclude: Sequence[str] | None) -> None:
        """Refuse (UsageError, exit 2) the first ``exclude=`` entry that names no node, op type or tensor
        of ``model``: a typo would otherwise exclude nothing, silently."""
        unknown = unknown_exclusions(model, exclude or [])
        if unknown:
            raise cls.option_error(f"exclude entry {unknown[0]!r} matches no node name, op type or tensor of the model")

    def apply(self, model: onnx.ModelProto, options: Options, context: Context) -> dict[str, Any]:
        """Edit ``model`` in place and return JSON-serialisable stats. ``options`` are the validated
        :class:`Options` (``options.bits``, or ``options["bits"]`` as a dict)."""
        raise NotImplementedError


@dataclass(frozen=True)
class PluginSpec:
    """One step of a chain: a method name and its raw options (``--plugin NAME[:key=value,...]``
    strings, or typed values from a recipe; the method validates them)."""

    plugin: str
    options: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        if not self.options:
            return self.plugin
        return self.plugin + ":" + ",".join(f"{k}={v}" for k, v in self.options.items())


def parse_plugin_spec(text: str) -> PluginSpec:
    """Parse ``NAME`` or ``NAME:key=value,key=[a,b]`` (commas inside brackets stay in the value)."""
    name, sep, rest = text.partition(":")
    name = name.strip()
    if not name:
        raise UsageError(f"--plugin {text!r}: missing the method name")
    options: dict[str, Any] = {}
    if sep and not rest.strip():
        raise UsageError(f"--plugin {text!r}: nothing after ':'; use NAME:key=value,key=value")
    for item in _split_top_level(rest) if rest.strip() else []:
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or not key:
            raise UsageError(f"--plugin {text!r}: {item!r} is not key=value")
        if key in options:
            raise UsageError(f"--plugin {text!r}: option {key!r} given twice")
        options[key] = value.strip()
    return PluginSpec(name, options)


def _split_top_level(text: str) -> list[str]:
    parts, depth, current = [], 0, []
    for ch in text:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth = max(0, depth - 1)
        if ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return [p for p in parts if p.strip()]


def check_method_class(cls: Any) -> str | None:
    """Why ``cls`` is not a valid method class, or None when it is."""
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        return f"{cls!r} is not a subclass of onnxshrink.Method"
    if not _NAME_RE.match(cls.name or ""):
        return f"{cls.__name__}.name {cls.name!r} must match [a-z][a-z0-9_]*"
    if cls.kind not in KINDS:
        return f"method {cls.name!r}: kind {cls.kind!r} must be one of {', '.join(KINDS)}"
    if not cls.summary():
        return f"method {cls.name!r} has no docstring"
    if cls.apply is Method.apply:
        return f"method {cls.name!r} does not implement apply()"
    seen = set()
    for opt in cls.options:
        if not isinstance(opt, Option):
            return f"method {cls.name!r}: options must be onnxshrink.Option instances"
        if opt.name in seen:
            return f"method {cls.name!r}: option {opt.name!r} is declared twice"
        seen.add(opt.name)
        if not opt.doc.strip():
            return f"method {cls.name!r}: option {opt.name!r} has no doc"
        if opt.type not in _TYPE_NAMES:
            return f"method {cls.name!r}: option {opt.name!r} has unsupported type {opt.type!r}"
    for opt in cls.options:
        for key, allowed in opt.only_with or ():
            other = cls.option(key)
            if other is None or key == opt.name:
                return (
                    f"method {cls.name!r}: option {opt.name!r}: only_with names "
                    f"{'itself' if other else f'unknown option {key!r}'}"
                )
            try:
                for value in allowed:
                    other.parse(value, f"method {cls.name!r}: option {opt.name!r}: only_with")
            except UsageError as exc:
                return exc.message
    return check_search_space(cls)


def check_search_space(
    cls: type[Method], space: tuple[Tunable, ...] | None = None, fixed: dict[str, Any] | None = None
) -> str | None:
    """Why ``cls.search_space``/``search_fixed`` (or the ``space``/``fixed`` given) do not fit its
    options, or None when they do."""
    space = cls.search_space if space is None else space
    fixed = cls.search_fixed if fixed is None else fixed
    where = f"method {cls.name!r}: search_space"
    seen: set[str] = set()
    for t in space:
        if not isinstance(t, Tunable):
            return f"{where} must hold onnxshrink.Tunable instances"
        opt = cls.option(t.option)
        if opt is None:
            return f"{where} names unknown option {t.option!r}"
        if t.option in seen or t.option in fixed:
            return f"{where} names option {t.option!r} twice"
        seen.add(t.option)
        if t.where not in TUNABLE_WHERE:
            return f"{where}: option {t.option!r}: where must be one of {', '.join(TUNABLE_WHERE)} (got {t.where!r})"
        if t.choices is not None:
            if not t.choices or t.low is not None or t.high is not None:
                return f"{where}: option {t.option!r} needs either non-empty choices or low/high"
            values = list(t.choices)
            if not all(isinstance(v, (bool, int, float, str)) for v in values):
                return f"{where}: option {t.option!r}: choices must be numbers, strings or booleans"
        else:
            if opt.type not in (int, float) or t.low is None or t.high is None or not t.low <= t.high:
                return f"{where}: option {t.option!r} needs low <= high on an int or float option"
            if t.log and t.low <= 0:
                return f"{where}: option {t.option!r} with log=True needs low > 0"
            values = [t.low, t.high]
        try:
            for value in values:
                opt.parse(value, where)
        except UsageError as exc:
            return exc.message
    for key, value in fixed.items():
        opt = cls.option(key)
        if opt is None:
            return f"method {cls.name!r}: search_fixed names unknown option {key!r}"
        try:
            opt.parse(value, f"method {cls.name!r}: search_fixed")
        except UsageError as exc:
            return exc.message
    return None
