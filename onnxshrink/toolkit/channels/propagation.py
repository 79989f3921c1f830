"""Forward propagation of channel layouts through the main graph, one rule per op type.

Each rule sees the layouts of its node's inputs and sets the layouts of its outputs, records the edits
that removing channels would make to the node, and declines atoms (with a reason) wherever it cannot
show that channels stay independent. An op without a rule declines every atom it reads.
"""

from __future__ import annotations

import onnx

from onnxshrink.toolkit.channels.ops_pointwise import (
    batchnorm,
    elementwise,
    layernorm,
    lpnorm,
    mvn,
    passthrough,
    pool,
    reduce,
    softmax,
)
from onnxshrink.toolkit.channels.ops_shape import (
    concat,
    flatten,
    gather,
    pad,
    reshape,
    resize,
    slice_,
    squeeze,
    transpose,
    unsqueeze,
)
from onnxshrink.toolkit.channels.ops_weighted import conv, gemm, matmul
from onnxshrink.toolkit.channels.state import Propagation, Rule, node_label


def refuse(why: str) -> Rule:
    def rule(s: Propagation, i: int, node: onnx.NodeProto) -> None:
        s.decline_reads(node, f"{node.op_type} {node_label(node)!r} {why}")

    return rule


def unknown(s: Propagation, i: int, node: onnx.NodeProto) -> None:
    s.decline_reads(node, f"{node.op_type} {node_label(node)!r} is not known to keep channels apart")


PASSTHROUGH = (
    "Relu",
    "LeakyRelu",
    "Sigmoid",
    "Tanh",
    "HardSigmoid",
    "HardSwish",
    "Elu",
    "Selu",
    "Celu",
    "Gelu",
    "Mish",
    "Softplus",
    "Softsign",
    "ThresholdedRelu",
    "Shrink",
    "Erf",
    "Abs",
    "Neg",
    "Exp",
    "Log",
    "Sqrt",
    "Reciprocal",
    "Floor",
    "Ceil",
    "Round",
    "Sign",
    "Sin",
    "Cos",
    "Tan",
    "Not",
    "IsNaN",
    "IsInf",
    "Cast",
    "Identity",
    "Dropout",
)
ELEMENTWISE = (
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Pow",
    "Max",
    "Min",
    "Sum",
    "Mean",
    "Where",
    "PRelu",
    "Clip",
    "Mod",
    "Equal",
    "Less",
    "Greater",
    "LessOrEqual",
    "GreaterOrEqual",
    "And",
    "Or",
    "Xor",
)

RULES: dict[str, Rule] = {
    **{op: passthrough for op in PASSTHROUGH},
    **{op: elementwise for op in ELEMENTWISE},
    "Conv": conv,
    "ConvTranspose": conv,
    "Gemm": gemm,
    "MatMul": matmul,
    "BatchNormalization": batchnorm,
    "InstanceNormalization": batchnorm,
    "Transpose": transpose,
    "Softmax": softmax,
    "LogSoftmax": softmax,
    "Hardmax": softmax,
    "LayerNormalization": layernorm,
    "MeanVarianceNormalization": mvn,
    "LpNormalization": lpnorm,
    **{op: pool for op in ("MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool")},
    **{
        op: reduce
        for op in (
            "ReduceMean",
            "ReduceSum",
            "ReduceMax",
            "ReduceMin",
            "ReduceProd",
            "ReduceL1",
            "ReduceL2",
            "ReduceLogSum",
            "ReduceLogSumExp",
            "ReduceSumSquare",
            "ArgMax",
            "ArgMin",
        )
    },
    "Squeeze": squeeze,
    "Unsqueeze": unsqueeze,
    "Flatten": flatten,
    "Reshape": reshape,
    "Concat": concat,
    "Slice": slice_,
    "Gather": gather,
    "Pad": pad,
    "Resize": resize,
    "Upsample": resize,
    "Split": refuse("splits the channels (Split is not followed)"),
    "Shape": refuse("reads the channel count"),
    "Size": refuse("reads the channel count"),
    "Expand": refuse("may broadcast along the channels"),
    "GroupNormalization": refuse("normalises over groups of channels"),
    "LRN": refuse("mixes neighbouring channels"),
}


def propagate(model: onnx.ModelProto) -> Propagation:
    """Run every rule over the main graph in order and decline atoms that reach a graph output."""
    state = Propagation(model)
    for index, node in enumerate(state.nodes):
        known = node.domain in ("", "ai.onnx") and not any(
            a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute
        )
        rule = RULES.get(node.op_type, unknown) if known else unknown
        if node.op_type == "Constant":
            continue
        rule(state, index, node)
    for output in model.graph.output:
        state.decline(state.layout(output.name), f"they reach graph output {output.name!r}")
    return state
