"""``onnxshrink tune``: search chains of methods and their options for the smallest model that passes
the gate, on this machine (child processes) or on Ray. See docs/tune.md.

``tune(TuneJob(...))`` returns ``(report, exit_code)``; the report's schema is ``onnxshrink.tune/1``
(see :mod:`onnxshrink.tune.report`).
"""

from __future__ import annotations

from onnxshrink.tune.report import SCHEMA
from onnxshrink.tune.run import TuneJob, parse_bytes, parse_duration, tune

__all__ = ["SCHEMA", "TuneJob", "parse_bytes", "parse_duration", "tune"]
