"""Initializers that are also graph inputs, and when a method may treat them as constants.

Older exporters list every initializer among the graph inputs (torch's
``keep_initializers_as_inputs``). onnxruntime lets a caller feed such an input instead, so a method
must not rewrite it as is; with ``input_weights`` it may first make it a plain constant (removed from
the inputs): ``auto`` when every initializer is an input (the exporters' layout: nobody means to feed
them), ``constant`` always, ``float`` never. A method that changes nothing puts the inputs back.
"""

from __future__ import annotations

import onnx

import onnxshrink
from onnxshrink import Option

INPUT_WEIGHTS_OPTION = Option(
    "input_weights",
    str,
    "auto",
    "Initializers that are also graph inputs: auto (constants when every initializer is one, the layout "
    "older exporters write, e.g. torch's keep_initializers_as_inputs; else left float), constant (always: "
    "removed from the inputs and treated as constants) or float (left float).",
    choices=("auto", "constant", "float"),
)


class FreedInputs:
    """The graph inputs as declared before ``free``; ``count`` initializers were taken out of them."""

    def __init__(self, model: onnx.ModelProto, policy: str) -> None:
        self._model = model
        self._declared = [onnx.ValueInfoProto.FromString(i.SerializeToString()) for i in model.graph.input]
        self.policy = policy
        self.count = _free(model, policy)

    def log(self, context: onnxshrink.Context) -> None:
        if self.count:
            why = "input_weights=constant"
            if self.policy == "auto":
                why = "every initializer, as older exporters write them"
            context.log(
                f"{self.count} initializers were also graph inputs ({why}); "
                "treated as constants and removed from the inputs"
            )

    def restore(self) -> None:
        """Put the declared inputs back (the method changed nothing, so the interface stays as it was)."""
        if self.count:
            del self._model.graph.input[:]
            self._model.graph.input.extend(self._declared)
            self.count = 0


def _free(model: onnx.ModelProto, policy: str) -> int:
    inits = {t.name for t in model.graph.initializer}
    listed = [i for i in model.graph.input if i.name in inits]
    if policy == "float" or not listed or (policy == "auto" and len(listed) < len(inits)):
        return 0
    kept = [onnx.ValueInfoProto.FromString(i.SerializeToString()) for i in model.graph.input if i.name not in inits]
    del model.graph.input[:]
    model.graph.input.extend(kept)
    return len(listed)
