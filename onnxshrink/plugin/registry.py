"""Plugin loading: entry points of the group ``onnxshrink`` through pluggy, and the method registry.

Built-in methods are entry points of the ``onnxshrink`` distribution itself, so they register exactly
like third-party ones. Environment variables:

- ``ONNXSHRINK_LOAD_PLUGINS``: comma-separated allow-list of third-party plugins (entry-point or
  distribution names). Set but empty: no third-party plugin loads. Built-ins always load.
- ``ONNXSHRINK_BLOCK_PLUGINS``: comma-separated block-list (entry-point or distribution names),
  applied to built-ins too.
- ``ONNXSHRINK_TRACE_PLUGINS=1``: print every hook call with its plugin to stderr.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import metadata
from typing import Any

import pluggy

from onnxshrink.errors import PluginError, UsageError
from onnxshrink.plugin import hookspecs
from onnxshrink.plugin.method import Method, check_method_class

ENTRY_POINT_GROUP = "onnxshrink"
BUILTIN_DISTRIBUTION = "onnxshrink"


@dataclass(frozen=True)
class MethodInfo:
    """A registered method and where it came from."""

    cls: type[Method]
    plugin: str
    distribution: str
    version: str

    @property
    def builtin(self) -> bool:
        return self.distribution == BUILTIN_DISTRIBUTION

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.cls.name,
            "kind": self.cls.kind,
            "summary": self.cls.summary(),
            "doc": (self.cls.__doc__ or "").strip(),
            "plugin": self.plugin,
            "distribution": self.distribution,
            "version": self.version,
            "builtin": self.builtin,
            "options": [o.describe() for o in self.cls.options],
            "search_space": [t.describe() for t in self.cls.search_space],
            "search_fixed": dict(self.cls.search_fixed),
            "lossless": self.cls.lossless,
        }


@dataclass(frozen=True)
class LoadError:
    """A plugin that could not be loaded, and why."""

    plugin: str
    distribution: str
    version: str
    message: str

    def __str__(self) -> str:
        return f"plugin {self.plugin!r} (distribution {self.distribution} {self.version}): {self.message}"


@dataclass
class Registry:
    """The methods every loaded plugin registered, plus the plugins that failed to load."""

    manager: pluggy.PluginManager
    methods: dict[str, MethodInfo] = field(default_factory=dict)
    errors: list[LoadError] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def get(self, name: str) -> MethodInfo:
        """The method called ``name``, or a UsageError listing the known ones."""
        if name in self.methods:
            return self.methods[name]
        known = ", ".join(sorted(self.methods)) or "(none)"
        raise UsageError(f"unknown plugin {name!r}; known plugins: {known}")

    def raise_for_errors(self) -> None:
        """Fail (exit 3) when any plugin failed to load."""
        if self.errors:
            err = self.errors[0]
            raise PluginError(
                err.plugin,
                f"(distribution {err.distribution} {err.version}) {err.message}; "
                "block it with ONNXSHRINK_BLOCK_PLUGINS to run without it",
            )


def _env_list(name: str) -> set[str] | None:
    raw = os.environ.get(name)
    if raw is None:
        return None
    return {item.strip() for item in raw.split(",") if item.strip()}


def _dist_of(ep: metadata.EntryPoint) -> tuple[str, str]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return "unknown", "unknown"
    return dist.metadata["Name"] or "unknown", dist.version or "unknown"


def _selected(ep_name: str, dist: str, allow: set[str] | None, block: set[str]) -> bool:
    if ep_name in block or dist in block:
        return False
    if dist == BUILTIN_DISTRIBUTION:
        return True
    return allow is None or ep_name in allow or dist in allow


def _enable_trace(pm: pluggy.PluginManager) -> None:
    """Print each hook call with the plugins that implement it, and what they returned."""

    def before(hook_name: str, hook_impls: list, kwargs: dict) -> None:
        plugins = ", ".join(impl.plugin_name for impl in hook_impls) or "(no implementation)"
        sys.stderr.write(f"onnxshrink trace: {hook_name} -> {plugins}\n")

    def after(outcome: Any, hook_name: str, hook_impls: list, kwargs: dict) -> None:
        if outcome.exception is not None:
            sys.stderr.write(f"onnxshrink trace: {hook_name} raised {outcome.exception!r}\n")

    pm.add_hookcall_monitoring(before, after)


def load_registry(*, trace: bool | None = None) -> Registry:
    """Load every selected plugin and collect the methods they register."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    if trace if trace is not None else os.environ.get("ONNXSHRINK_TRACE_PLUGINS", "") not in ("", "0"):
        _enable_trace(pm)
    registry = Registry(manager=pm)
    allow = _env_list("ONNXSHRINK_LOAD_PLUGINS")
    block = _env_list("ONNXSHRINK_BLOCK_PLUGINS") or set()
    origin: dict[str, tuple[str, str]] = {}

    eps = sorted(
        metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: (_dist_of(e)[0] != BUILTIN_DISTRIBUTION, e.name)
    )
    for ep in eps:
        dist, version = _dist_of(ep)
        if ep.name in origin:
            continue  # the same distribution seen twice on sys.path
        if not _selected(ep.name, dist, allow, block):
            registry.skipped.append(ep.name)
            continue
        try:
            plugin = ep.load()
        except Exception as exc:  # noqa: BLE001 - any import failure is reported, naming the plugin
            registry.errors.append(
                LoadError(ep.name, dist, version, f"failed to import {ep.value}: {type(exc).__name__}: {exc}")
            )
            continue
        try:
            pm.register(plugin, name=ep.name)
            pm.check_pending()
        except Exception as exc:  # noqa: BLE001 - pluggy validation errors name the hook
            if pm.is_registered(plugin):
                pm.unregister(plugin)
            registry.errors.append(LoadError(ep.name, dist, version, f"invalid hook implementation: {exc}"))
            continue
        origin[ep.name] = (dist, version)

    for plugin_name, (dist, version) in origin.items():
        _collect_methods(registry, plugin_name, dist, version)
    return registry


def _collect_methods(registry: Registry, plugin_name: str, dist: str, version: str) -> None:
    pm = registry.manager
    others = [p for name, p in pm.list_name_plugin() if name != plugin_name]
    caller = pm.subset_hook_caller("register_methods", remove_plugins=others)
    pending: list[Any] = []
    try:
        caller(register=pending.append)
    except Exception as exc:  # noqa: BLE001
        registry.errors.append(
            LoadError(plugin_name, dist, version, f"register_methods raised {type(exc).__name__}: {exc}")
        )
        return
    for cls in pending:
        problem = check_method_class(cls)
        if problem:
            registry.errors.append(LoadError(plugin_name, dist, version, problem))
            continue
        existing = registry.methods.get(cls.name)
        if existing is not None:
            registry.errors.append(
                LoadError(
                    plugin_name,
                    dist,
                    version,
                    f"method name {cls.name!r} is already registered by plugin {existing.plugin!r} "
                    f"(distribution {existing.distribution} {existing.version})",
                )
            )
            continue
        registry.methods[cls.name] = MethodInfo(cls, plugin_name, dist, version)


@lru_cache(maxsize=1)
def default_registry() -> Registry:
    """The process-wide registry (loaded once)."""
    return load_registry()
