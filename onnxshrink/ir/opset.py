"""The model's default-domain opset, and converting a model to a newer one."""

from __future__ import annotations

import onnx
from onnx import helper, version_converter

DEFAULT_DOMAINS = ("", "ai.onnx")  # the default (ONNX) operator set's two spellings


def model_opset(model: onnx.ModelProto) -> int:
    """The model's default-domain opset version."""
    return next((o.version for o in model.opset_import if o.domain in DEFAULT_DOMAINS), 1)


def upgrade_opset(model: onnx.ModelProto, version: int) -> onnx.ModelProto:
    """A copy of ``model`` converted to default-domain opset ``version`` (IR version raised to match).

    Raises ValueError with onnx's reason when the converter cannot do it.
    """
    try:
        converted = version_converter.convert_version(model, version)
    except Exception as exc:  # noqa: BLE001 - the converter raises bare RuntimeErrors
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise ValueError(
            f"onnx.version_converter cannot convert opset {model_opset(model)} to {version}: {reason}"
        ) from None
    needed_ir = min((row[1] for row in helper.VERSION_TABLE if row[2] >= version), default=converted.ir_version)
    converted.ir_version = max(converted.ir_version, needed_ir)
    return converted
