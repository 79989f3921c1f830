"""The search space of ``onnxshrink tune``: which chains of methods, and which options, with which ranges.

Built from the installed methods (each declares ``search_space``, see :class:`onnxshrink.Tunable`),
restricted by ``--plugin NAME[:key=value]`` (only these methods; given options are fixed) or replaced
by a ``--space FILE.toml``::

    chains = [["weight_prune", "sparse_store"], ["int_quant"]]   # optional
    [int_quant]
    bits = [8, 4]                                   # a list: the choices
    mode = "storage"                                # a scalar: fixed
    [weight_prune]
    sparsity = { low = 0.3, high = 0.9, step = 0.05 }  # a table: a range (log = true for a log scale)

Every method named in the file joins with its declared search space, each key given replaces that
option's range. Without ``chains``, the chains are every single method plus every pair of a ``prune``
method followed by a method of another kind (prune, then quantize or store).

The optimizer sees one categorical parameter ``chain`` and one parameter ``PLUGIN.OPTION`` per
searched option; :meth:`SearchSpace.suggest` turns an optuna trial into a chain of steps.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from onnxshrink.errors import UsageError
from onnxshrink.plugin.method import Method, PluginSpec, Tunable, check_search_space
from onnxshrink.plugin.registry import Registry

CHAIN_PARAM = "chain"
# The start points try each quantize method with an option of this name (the weight bit width, the
# convention every built-in quantizer follows) at START_BITS: the strong, cheap corner of most spaces.
BITS_OPTION = "bits"
START_BITS = 4


@dataclass
class MethodSpace:
    """One method's searched options (``tunables``) and its fixed ones."""

    cls: type[Method]
    tunables: dict[str, Tunable] = field(default_factory=dict)
    fixed: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.cls.name

    @property
    def lossless(self) -> bool:
        return bool(self.cls.lossless)

    def default_in_space(self) -> bool:
        """True when every option searched with the space (``NAME``) has its default among the values
        the search can take."""
        for name, t in self.tunables.items():
            if t.where == "default":
                continue
            default = self.cls.option(name).default
            if t.choices is not None and default not in t.choices:
                return False
            if t.choices is None and (default is None or not t.low <= default <= t.high):
                return False
        return True

    def first_values(self) -> dict[str, Any]:
        """A starting point: each option's default when it lies in the range, else the first choice or the middle."""
        out = {}
        for name, t in self.tunables.items():
            default = self.cls.option(name).default
            if t.choices is not None:
                out[name] = default if default in t.choices else t.choices[0]
            elif default is not None and t.low <= default <= t.high:
                out[name] = default
            else:
                middle = (t.low + t.high) / 2
                if t.step is not None:
                    middle = t.low + round((middle - t.low) / t.step) * t.step
                out[name] = int(middle) if self.cls.option(name).type is int else middle
        return out

    def searched(self, as_default: bool = False) -> list[str]:
        """The options searched in chain element ``NAME`` (``where`` "space" or "both") or, with
        ``as_default``, in ``NAME:default`` ("default" or "both"); the others keep their defaults."""
        wanted = ("default", "both") if as_default else ("space", "both")
        return [name for name, t in self.tunables.items() if t.where in wanted]

    def default_only_values(self) -> list[dict[str, Any]]:
        """Starting values for ``NAME:default`` beyond the first: each other choice of each option
        searched only there (e.g. each fidelity target), the rest at their first values; then the
        same at ``START_BITS`` bits when ``bits`` is searched there too and can take them."""
        first = self.first_values()
        out = []
        for name, t in self.tunables.items():
            if t.where == "default" and t.choices is not None:
                out += [{**first, name: value} for value in t.choices if value != first[name]]
        bits = self.tunables.get(BITS_OPTION)
        if bits is not None and bits.where == "both" and _can_take(bits, START_BITS):
            out += [{**values, BITS_OPTION: START_BITS} for values in out if values.get(BITS_OPTION) != START_BITS]
        return out

    def low_bit_values(self) -> list[dict[str, Any]]:
        """Starting values at ``START_BITS`` bits: other numeric choices (block or group sizes) at their
        smallest positive value, then at their largest; [] when the space has no such ``bits`` option."""
        bits = self.tunables.get(BITS_OPTION)
        if bits is None or not _can_take(bits, START_BITS):
            return []
        base = {**self.first_values(), BITS_OPTION: START_BITS}
        sized = {
            name: [v for v in t.choices if isinstance(v, int) and not isinstance(v, bool) and v > 0]
            for name, t in self.tunables.items()
            if name != BITS_OPTION and t.choices is not None
        }
        sized = {name: values for name, values in sized.items() if values}
        out = []
        for pick in (min, max):
            values = {**base, **{name: pick(choices) for name, choices in sized.items()}}
            if values not in out:
                out.append(values)
        return out


def _can_take(t: Tunable, value: Any) -> bool:
    if t.choices is not None:
        return value in t.choices
    if t.low is None or t.high is None or not t.low <= value <= t.high:
        return False
    return t.step is None or abs((value - t.low) / t.step - round((value - t.low) / t.step)) < 1e-9


@dataclass
class SearchSpace:
    methods: dict[str, MethodSpace]
    chains: list[tuple[str, ...]]
    left_out: dict[str, str] = field(default_factory=dict)  # method -> why it can change nothing here

    @property
    def chain_labels(self) -> list[str]:
        return [chain_label(c) for c in self.chains]

    def leave_out_inapplicable(self, model: onnx.ModelProto) -> dict[str, str]:
        """Drop the methods that say they can change nothing in ``model`` (``Method.not_applicable``:
        e.g. a quantizer on a model already quantized) and the chains that use them; returns
        ``{method: reason}``. A UsageError when no chain is left."""
        for name, space in self.methods.items():
            try:
                reason = space.cls.not_applicable(model)
            except Exception:  # a third-party hook that fails does not stop the search: the method stays
                reason = None
            if reason:
                self.left_out[name] = str(reason)
        self.methods = {n: m for n, m in self.methods.items() if n not in self.left_out}
        self.chains = [c for c in self.chains if all(split_element(e)[0] in self.methods for e in c)]
        if not self.chains:
            reasons = "; ".join(f"{name}: {why}" for name, why in self.left_out.items())
            raise UsageError(f"nothing to search on this model: {reasons}")
        return dict(self.left_out)

    def describe(self) -> dict[str, Any]:
        """JSON-ready, for the report."""
        return {
            "left_out": dict(self.left_out),
            "chains": [list(c) for c in self.chains],
            "methods": {
                name: {"search": [t.describe() for t in m.tunables.values()], "fixed": dict(m.fixed)}
                for name, m in self.methods.items()
            },
        }

    def suggest(self, trial: Any) -> list[PluginSpec]:
        """Ask the optuna ``trial`` for a chain and its options."""
        label = trial.suggest_categorical(CHAIN_PARAM, self.chain_labels)
        steps = []
        for element in label.split("+"):
            plugin, as_default = split_element(element)
            space = self.methods[plugin]
            options = dict(space.fixed)
            for name in space.searched(as_default):
                options[name] = _suggest(trial, f"{plugin}.{name}", space.tunables[name], space.cls.option(name).type)
            steps.append(PluginSpec(plugin, options))
        return steps

    def searched_params(self, label: str) -> set[str]:
        """The parameter names a chain label uses (besides ``chain``)."""
        out = set()
        for element in label.split("+"):
            plugin, as_default = split_element(element)
            out |= {f"{plugin}.{name}" for name in self.methods[plugin].searched(as_default)}
        return out

    def distributions(self) -> dict[str, Any]:
        """Every parameter's optuna distribution (to replay finished trials on --resume)."""
        import optuna.distributions as d

        out: dict[str, Any] = {CHAIN_PARAM: d.CategoricalDistribution(self.chain_labels)}
        for plugin, space in self.methods.items():
            for name, t in space.tunables.items():
                key = f"{plugin}.{name}"
                if t.choices is not None:
                    out[key] = d.CategoricalDistribution(list(t.choices))
                elif space.cls.option(name).type is int:
                    out[key] = d.IntDistribution(int(t.low), int(t.high), log=t.log, step=int(t.step or 1))
                else:
                    out[key] = d.FloatDistribution(t.low, t.high, log=t.log, step=t.step)
        return out

    def start_points(self) -> list[dict[str, Any]]:
        """The first trials, strong and cheap ones before the optimizer explores, over the chains of
        one quantize method (lossless methods after it allowed), in this order:

        1. each method at its own defaults (``NAME:default``, the baseline a tuned model must beat);
        2. ``NAME:default`` at ``START_BITS`` bits (where its ``bits`` can take them);
        3. each other method at ``START_BITS`` bits with its other numeric choices at their finest
           positive value (smallest blocks or groups: the most accurate), then at their coarsest
           (the smallest file);
        4. ``NAME:default`` with each other choice of its options searched only there, at its first
           bits and then at ``START_BITS`` bits (zoo centerface: 4 bits at ``target_cosine=0.99``);
        5. each other method at its starting values (defaults where they lie in the space).

        The low-bit points, which most often win, come before the slow, rarely small defaults (5.).
        Derived from the declared spaces and the defaults only."""
        defaults, others = [], []
        for chain in self.chains:
            core = [e for e in chain if not self.methods[split_element(e)[0]].lossless]
            if len(core) != 1:
                continue
            plugin, as_default = split_element(core[0])
            if self.methods[plugin].cls.kind == "quantize":
                (defaults if as_default else others).append((chain, plugin, as_default))
        points: list[dict[str, Any]] = []

        def add(chain: tuple[str, ...], plugin: str, as_default: bool, values: dict[str, Any]) -> None:
            searched = self.methods[plugin].searched(as_default)
            point = {CHAIN_PARAM: chain_label(chain), **{f"{plugin}.{k}": values[k] for k in searched}}
            if point not in points:
                points.append(point)

        for chain, plugin, as_default in defaults:
            add(chain, plugin, as_default, self.methods[plugin].first_values())
        for group in (defaults, others):
            for chain, plugin, as_default in group:
                for values in self.methods[plugin].low_bit_values():
                    add(chain, plugin, as_default, values)
        for chain, plugin, as_default in defaults:
            for values in self.methods[plugin].default_only_values():
                add(chain, plugin, as_default, values)
        for chain, plugin, as_default in others:
            add(chain, plugin, as_default, self.methods[plugin].first_values())
        return points


def chain_label(chain: tuple[str, ...] | list[str]) -> str:
    return "+".join(chain)


DEFAULT_SUFFIX = ":default"


def split_element(element: str) -> tuple[str, bool]:
    """``"int_quant:default"`` → ``("int_quant", True)``: the method with its defaults (and fixed options);
    only its options declared ``where="default"`` or ``"both"`` are searched."""
    if element.endswith(DEFAULT_SUFFIX):
        return element[: -len(DEFAULT_SUFFIX)], True
    return element, False


def _suggest(trial: Any, key: str, t: Tunable, kind: type) -> Any:
    if t.choices is not None:
        return trial.suggest_categorical(key, list(t.choices))
    if kind is int:
        return trial.suggest_int(key, int(t.low), int(t.high), step=int(t.step or 1), log=t.log)
    return trial.suggest_float(key, t.low, t.high, step=t.step, log=t.log)


def default_chains(methods: dict[str, MethodSpace]) -> list[tuple[str, ...]]:
    """Every quantize method as it is by default where its default lies outside its search space
    (``NAME:default``, so tune always measures it), every single method, then every prune method
    followed by a method of another kind. Lossless methods (``Method.lossless``: same outputs, fewer
    bytes) end every chain, and run alone as one more chain."""
    names = [n for n in methods if not methods[n].lossless]
    finish = tuple(n for n in methods if methods[n].lossless)
    chains: list[tuple[str, ...]] = [
        (n + DEFAULT_SUFFIX,) for n in names if methods[n].cls.kind == "quantize" and not methods[n].default_in_space()
    ]
    chains += [(n,) for n in names]
    for first in names:
        if methods[first].cls.kind != "prune":
            continue
        chains += [(first, second) for second in names if methods[second].cls.kind != "prune"]
    chains = [chain + finish for chain in chains]
    if finish:
        chains.append(finish)
    return chains


def build_space(
    registry: Registry,
    plugins: list[PluginSpec] | None = None,
    space_file: Path | None = None,
) -> SearchSpace:
    """The space to search; every problem is a UsageError naming the plugin, the option or the file."""
    if space_file is not None:
        methods, chains = _from_file(registry, Path(space_file))
    else:
        methods, chains = {}, None
        for name, info in sorted(registry.methods.items()):
            if info.cls.search_space or info.cls.lossless:
                methods[name] = MethodSpace(
                    info.cls, {t.option: t for t in info.cls.search_space}, dict(info.cls.search_fixed)
                )
    if plugins:
        chosen: dict[str, MethodSpace] = {}
        for spec in plugins:
            info = registry.get(spec.plugin)
            base = methods.get(spec.plugin) or MethodSpace(
                info.cls, {t.option: t for t in info.cls.search_space}, dict(info.cls.search_fixed)
            )
            typed = info.cls.validate_options(dict(spec.options))
            for key in spec.options:
                base.tunables.pop(key, None)
                base.fixed[key] = typed[key]
            if not base.tunables and not spec.options and spec.plugin not in methods and not base.lossless:
                raise UsageError(
                    f"plugin {spec.plugin!r} declares no search space; give its options (--plugin "
                    f"{spec.plugin}:key=value) or a --space file"
                )
            chosen[spec.plugin] = base
        methods = chosen
        chains = [c for c in chains if all(split_element(p)[0] in methods for p in c)] if chains else None
    if not methods:
        raise UsageError("nothing to search: no installed method declares a search space (give --plugin or --space)")
    chains = chains or default_chains(methods)
    if not chains:
        raise UsageError("nothing to search: no chain is left after --plugin")
    for space in methods.values():
        space.cls.validate_options(dict(space.fixed))
        _drop_inapplicable_default_options(space)
    return SearchSpace(methods, chains)


def _drop_inapplicable_default_options(space: MethodSpace) -> None:
    """Options searched only at the defaults (``where="default"``) that the fixed options make
    meaningless (the method refuses them, e.g. a fidelity target once ``mode`` is fixed to a mode
    that has none) are not searched: every such trial would be invalid."""
    first = space.first_values()
    for name, t in list(space.tunables.items()):
        if t.where != "default":
            continue
        try:
            space.cls.validate_options({**space.fixed, name: first[name]})
        except UsageError:
            del space.tunables[name]


def _from_file(registry: Registry, path: Path) -> tuple[dict[str, MethodSpace], list[tuple[str, ...]] | None]:
    where = f"space {path}"
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"space file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read space file {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{where}: invalid TOML: {exc}") from None
    methods: dict[str, MethodSpace] = {}
    chains = None
    for key, value in data.items():
        if key == "chains":
            chains = _chains(value, where)
            continue
        if key not in registry.methods:
            raise UsageError(f"{where}: unknown plugin {key!r}; known plugins: {', '.join(sorted(registry.methods))}")
        if not isinstance(value, dict):
            raise UsageError(f"{where}: [{key}] must be a table of options")
        cls = registry.methods[key].cls
        space = MethodSpace(cls, {t.option: t for t in cls.search_space}, dict(cls.search_fixed))
        for option, spec in value.items():
            declared = space.tunables.pop(option, None)
            searched_in = declared.where if declared else "space"  # a declared option keeps its chains
            space.fixed.pop(option, None)
            if isinstance(spec, list):
                space.tunables[option] = Tunable(option, choices=tuple(spec), where=searched_in)
            elif isinstance(spec, dict):
                unknown = set(spec) - {"low", "high", "step", "log"}
                if unknown:
                    raise UsageError(
                        f"{where}: {key}.{option}: unknown range key {sorted(unknown)[0]!r} (use low, high, step, log)"
                    )
                space.tunables[option] = Tunable(
                    option,
                    low=spec.get("low"),
                    high=spec.get("high"),
                    step=spec.get("step"),
                    log=bool(spec.get("log", False)),
                    where=searched_in,
                )
            else:
                space.fixed[option] = spec
        _check(cls, space, f"{where}: [{key}]")
        methods[key] = space
    if chains:
        for chain in chains:
            for element in chain:
                plugin = split_element(element)[0]
                if plugin not in methods:
                    if plugin not in registry.methods:
                        raise UsageError(f"{where}: chains: unknown plugin {plugin!r}")
                    cls = registry.methods[plugin].cls
                    methods[plugin] = MethodSpace(cls, {t.option: t for t in cls.search_space}, dict(cls.search_fixed))
    return methods, chains


def _chains(value: Any, where: str) -> list[tuple[str, ...]]:
    if not isinstance(value, list) or not all(
        isinstance(c, list) and c and all(isinstance(p, str) for p in c) for c in value
    ):
        raise UsageError(
            f'{where}: chains must be a list of lists of plugin names, e.g. [["weight_prune", "int_quant"]]'
        )
    chains = [tuple(c) for c in value]
    for chain in chains:
        if len(set(chain)) != len(chain):
            raise UsageError(f"{where}: chain {list(chain)} names a plugin twice")
    return chains


def _check(cls: type[Method], space: MethodSpace, where: str) -> None:
    """Check a file's space with the same rules as a method's declared one."""
    problem = check_search_space(cls, tuple(space.tunables.values()), space.fixed)
    if problem:
        raise UsageError(f"{where}: {problem}")
