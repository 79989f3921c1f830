"""The hooks a plugin may implement. Each is documented in docs/plugin-authors.md."""

from __future__ import annotations

from collections.abc import Callable

import pluggy

PROJECT = "onnxshrink"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_methods(register: Callable[[type], None]) -> None:
    """Register compression methods: call ``register(MethodSubclass)`` once per method.

    Example::

        @onnxshrink.hookimpl
        def register_methods(register):
            register(MyMethod)
    """
