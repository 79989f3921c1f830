"""Error types that map to onnxshrink's exit codes.

Every error carries a one-line message naming the file, node, option or value at fault.
The CLI prints ``error: <message>`` and exits with ``exit_code``; ``--traceback`` shows the stack.
"""

from __future__ import annotations


class OnnxShrinkError(Exception):
    """Base class: a failure with a one-line message and an exit code."""

    exit_code = 3

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))  # one line, always

    @property
    def message(self) -> str:
        return str(self)


class UsageError(OnnxShrinkError):
    """Bad command-line input, option, recipe key or data: exit 2."""

    exit_code = 2


class InvalidModelError(OnnxShrinkError):
    """The input model (or its external data) cannot be read safely: exit 2."""

    exit_code = 2


class PluginError(OnnxShrinkError):
    """A plugin failed to load, register or run, or produced an invalid model: exit 3."""

    exit_code = 3

    def __init__(self, plugin: str, message: str):
        self.plugin = plugin
        super().__init__(f"plugin {plugin!r}: {message}")


class InternalError(OnnxShrinkError):
    """A failure inside onnxshrink itself: exit 3."""

    exit_code = 3


def one_line(exc: BaseException, limit: int = 600) -> str:
    """An exception's whole message on one line (onnx.checker names the node on its last line), shortened."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
