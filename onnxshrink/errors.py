"""Error types that map to onnxshrink's exit codes.

Every error carries a one-line message naming the file, node, option or value at fault.
The CLI prints ``error: <message>`` and exits with ``exit_code``; ``--traceback`` shows the stack.
``ExitCode`` is the one table of exit codes (documented in the README's "Exit codes").
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """Every exit code onnxshrink uses; an int, so ``sys.exit`` and JSON reports see plain numbers."""

    OK = 0  # success: every gate passed or there was none; tune found a passing model
    GATE_FAILED = 1  # a gate failed (the candidate is still written); tune found no passing model
    USAGE = 2  # usage error or invalid input (UsageError, InvalidModelError)
    FAILURE = 3  # a plugin failed (PluginError) or an internal error
    INTERRUPTED = 130  # Ctrl-C or SIGTERM (128 + SIGINT, as shells report it)


class OnnxShrinkError(Exception):
    """Base class: a failure with a one-line message and an exit code."""

    exit_code: ExitCode = ExitCode.FAILURE

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))  # one line, always

    @property
    def message(self) -> str:
        return str(self)


class UsageError(OnnxShrinkError):
    """Bad command-line input, option, recipe key or data: exit 2."""

    exit_code = ExitCode.USAGE


class InvalidModelError(OnnxShrinkError):
    """The input model (or its external data) cannot be read safely: exit 2."""

    exit_code = ExitCode.USAGE


class PluginError(OnnxShrinkError):
    """A plugin failed to load, register or run, or produced an invalid model: exit 3."""

    exit_code = ExitCode.FAILURE

    def __init__(self, plugin: str, message: str):
        self.plugin = plugin
        super().__init__(f"plugin {plugin!r}: {message}")


class InternalError(OnnxShrinkError):
    """A failure inside onnxshrink itself: exit 3."""

    exit_code = ExitCode.FAILURE


def one_line(exc: BaseException, limit: int = 600) -> str:
    """An exception's whole message on one line (onnx.checker names the node on its last line), shortened."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
