"""Small reference models built in code, covering what real exported models do to optimizers.

Each builder returns a valid ``onnx.ModelProto`` (checked with strict shape inference) whose weights
come from a fixed seed. Used by onnxshrink's tests and by the conformance kit for plugin authors.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _w(rng: np.random.Generator, *shape: int, scale: float = 0.2) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def _model(nodes, inputs, outputs, initializers=(), opset: int = OPSET, name: str = "g") -> onnx.ModelProto:
    graph = helper.make_graph(nodes, name, inputs, outputs, list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="onnxshrink-tests")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def mlp(batch: int | str = "batch", seed: int = 0, hidden: int = 32, prefix: str = "") -> onnx.ModelProto:
    """Gemm → Relu → MatMul + Add → logits (16 → ``hidden`` → 10); weight names start with ``prefix``."""
    rng = _rng(seed)
    inits = [
        numpy_helper.from_array(_w(rng, hidden, 16), f"{prefix}fc1.weight"),
        numpy_helper.from_array(_w(rng, hidden), f"{prefix}fc1.bias"),
        numpy_helper.from_array(_w(rng, hidden, 10), f"{prefix}fc2.weight"),
        numpy_helper.from_array(_w(rng, 10), f"{prefix}fc2.bias"),
    ]
    nodes = [
        helper.make_node("Gemm", ["input", f"{prefix}fc1.weight", f"{prefix}fc1.bias"], ["h"], name="fc1", transB=1),
        helper.make_node("Relu", ["h"], ["a"], name="relu1"),
        helper.make_node("MatMul", ["a", f"{prefix}fc2.weight"], ["m"], name="fc2"),
        helper.make_node("Add", ["m", f"{prefix}fc2.bias"], ["logits"], name="fc2_bias"),
    ]
    return _model(
        nodes,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 10])],
        inits,
    )


def conv_bn_residual(batch: int | str = "batch", seed: int = 0, channels: int = 8) -> onnx.ModelProto:
    """Conv → BN → Relu → Conv → BN → Add(residual) → Relu → GlobalAveragePool → Flatten → Gemm."""
    rng = _rng(seed)
    c = channels
    inits = [numpy_helper.from_array(_w(rng, c, 1, 3, 3), "stem.weight")]
    nodes = [helper.make_node("Conv", ["input", "stem.weight"], ["s"], name="stem", pads=[1, 1, 1, 1])]

    def bn(prefix: str, x: str, y: str) -> None:
        inits.extend(
            [
                numpy_helper.from_array((1 + 0.1 * rng.standard_normal(c)).astype(np.float32), f"{prefix}.scale"),
                numpy_helper.from_array((0.1 * rng.standard_normal(c)).astype(np.float32), f"{prefix}.bias"),
                numpy_helper.from_array((0.1 * rng.standard_normal(c)).astype(np.float32), f"{prefix}.mean"),
                numpy_helper.from_array((1 + 0.1 * rng.random(c)).astype(np.float32), f"{prefix}.var"),
            ]
        )
        nodes.append(
            helper.make_node(
                "BatchNormalization",
                [x, f"{prefix}.scale", f"{prefix}.bias", f"{prefix}.mean", f"{prefix}.var"],
                [y],
                name=prefix,
            )
        )

    bn("stem_bn", "s", "s_bn")
    nodes.append(helper.make_node("Relu", ["s_bn"], ["x0"], name="stem_relu"))
    inits.append(numpy_helper.from_array(_w(rng, c, c, 3, 3), "block.conv1.weight"))
    nodes.append(helper.make_node("Conv", ["x0", "block.conv1.weight"], ["b1"], name="block.conv1", pads=[1, 1, 1, 1]))
    bn("block.bn1", "b1", "b1_bn")
    nodes.append(helper.make_node("Relu", ["b1_bn"], ["b1_r"], name="block.relu1"))
    inits.append(numpy_helper.from_array(_w(rng, c, c, 3, 3), "block.conv2.weight"))
    nodes.append(
        helper.make_node("Conv", ["b1_r", "block.conv2.weight"], ["b2"], name="block.conv2", pads=[1, 1, 1, 1])
    )
    bn("block.bn2", "b2", "b2_bn")
    nodes += [
        helper.make_node("Add", ["b2_bn", "x0"], ["res"], name="block.add"),
        helper.make_node("Relu", ["res"], ["x1"], name="block.relu2"),
        helper.make_node("GlobalAveragePool", ["x1"], ["pooled"], name="pool"),
        helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten"),
    ]
    inits += [numpy_helper.from_array(_w(rng, 10, c), "fc.weight"), numpy_helper.from_array(_w(rng, 10), "fc.bias")]
    nodes.append(helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["logits"], name="fc", transB=1))
    return _model(
        nodes,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 10])],
        inits,
    )


def shared_weight(seed: int = 0) -> onnx.ModelProto:
    """One weight read by two MatMuls (tied weights)."""
    rng = _rng(seed)
    nodes = [
        helper.make_node("MatMul", ["input", "W"], ["h"], name="mm1"),
        helper.make_node("Relu", ["h"], ["a"], name="relu"),
        helper.make_node("MatMul", ["a", "W"], ["output"], name="mm2"),
    ]
    return _model(
        nodes,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 16])],
        [numpy_helper.from_array(_w(rng, 16, 16), "W")],
    )


def constant_node_weights(seed: int = 0) -> onnx.ModelProto:
    """Weights held in Constant nodes (as PaddlePaddle and some tracers export them)."""
    rng = _rng(seed)
    nodes = [
        helper.make_node("Constant", [], ["W1"], name="const_w1", value=numpy_helper.from_array(_w(rng, 16, 24), "W1")),
        helper.make_node("Constant", [], ["W2"], name="const_w2", value=numpy_helper.from_array(_w(rng, 24, 8), "W2")),
        helper.make_node("MatMul", ["input", "W1"], ["h"], name="mm1"),
        helper.make_node("Relu", ["h"], ["a"], name="relu"),
        helper.make_node("MatMul", ["a", "W2"], ["output"], name="mm2"),
    ]
    return _model(
        nodes,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 8])],
    )


def if_subgraph(seed: int = 0) -> onnx.ModelProto:
    """An If whose branches read weights: one from the outer scope, one stored inside the branch."""
    rng = _rng(seed)
    then_graph = helper.make_graph(
        [helper.make_node("MatMul", ["h", "W_outer"], ["t"], name="then_mm")],
        "then_branch",
        [],
        [helper.make_tensor_value_info("t", TensorProto.FLOAT, ["batch", 16])],
    )
    else_graph = helper.make_graph(
        [helper.make_node("MatMul", ["h", "W_inner"], ["e"], name="else_mm")],
        "else_branch",
        [],
        [helper.make_tensor_value_info("e", TensorProto.FLOAT, ["batch", 16])],
        [numpy_helper.from_array(_w(rng, 16, 16), "W_inner")],
    )
    nodes = [
        helper.make_node("MatMul", ["input", "W_in"], ["h"], name="mm_in"),
        helper.make_node("ReduceSum", ["input"], ["total"], name="sum", keepdims=0),
        helper.make_node("Greater", ["total", "zero"], ["cond"], name="cond"),
        helper.make_node("If", ["cond"], ["output"], name="branch", then_branch=then_graph, else_branch=else_graph),
    ]
    return _model(
        nodes,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 16])],
        [
            numpy_helper.from_array(_w(rng, 16, 16), "W_in"),
            numpy_helper.from_array(_w(rng, 16, 16), "W_outer"),
            numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero"),
        ],
    )


def initializer_as_input(seed: int = 0) -> onnx.ModelProto:
    """An initializer that is also a graph input (IR < 4 exporters do this for every weight)."""
    rng = _rng(seed)
    nodes = [helper.make_node("MatMul", ["input", "W"], ["output"], name="mm")]
    return _model(
        nodes,
        [
            helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 16]),
            helper.make_tensor_value_info("W", TensorProto.FLOAT, [16, 16]),
        ],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 16])],
        [numpy_helper.from_array(_w(rng, 16, 16), "W")],
    )


def fp16_mlp(seed: int = 0) -> onnx.ModelProto:
    """An MLP stored in float16 end to end."""
    rng = _rng(seed)
    nodes = [
        helper.make_node("MatMul", ["input", "W1"], ["h"], name="mm1"),
        helper.make_node("Relu", ["h"], ["a"], name="relu"),
        helper.make_node("MatMul", ["a", "W2"], ["output"], name="mm2"),
    ]
    return _model(
        nodes,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT16, ["batch", 16])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT16, ["batch", 8])],
        [
            numpy_helper.from_array(_w(rng, 16, 32).astype(np.float16), "W1"),
            numpy_helper.from_array(_w(rng, 32, 8).astype(np.float16), "W2"),
        ],
    )


REFERENCE_GRAPHS: dict[str, Callable[[], onnx.ModelProto]] = {
    "mlp": mlp,
    "conv_bn_residual": conv_bn_residual,
    "shared_weight": shared_weight,
    "constant_node_weights": constant_node_weights,
    "if_subgraph": if_subgraph,
    "initializer_as_input": initializer_as_input,
    "fp16_mlp": fp16_mlp,
}


def attention_with_mask(seed: int = 0) -> onnx.ModelProto:
    """Self-attention whose padding mask becomes an additive -1.7e38 bias (as exported BERT-style models do)."""
    rng = _rng(seed)
    d = 16
    inits = [numpy_helper.from_array(_w(rng, d, d), name) for name in ("Wq", "Wk", "Wv", "Wo")]
    inits += [
        numpy_helper.from_array(np.array(1.0, np.float32), "one"),
        numpy_helper.from_array(np.array(-1.7e38, np.float32), "mask_value"),
        numpy_helper.from_array(np.array([1], np.int64), "axis1"),
        numpy_helper.from_array(np.array(0.25, np.float32), "inv_sqrt_d"),
    ]
    nodes = [
        helper.make_node("MatMul", ["input", "Wq"], ["q"], name="query"),
        helper.make_node("MatMul", ["input", "Wk"], ["k"], name="key"),
        helper.make_node("MatMul", ["input", "Wv"], ["v"], name="value"),
        helper.make_node("Transpose", ["k"], ["kt"], name="key_t", perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "kt"], ["qk"], name="scores"),
        helper.make_node("Mul", ["qk", "inv_sqrt_d"], ["scaled"], name="scale"),
        helper.make_node("Sub", ["one", "mask"], ["inverted"], name="invert_mask"),
        helper.make_node("Mul", ["inverted", "mask_value"], ["bias"], name="mask_bias"),
        helper.make_node("Unsqueeze", ["bias", "axis1"], ["bias3"], name="mask_bias_3d"),
        helper.make_node("Add", ["scaled", "bias3"], ["masked"], name="apply_mask"),
        helper.make_node("Softmax", ["masked"], ["probs"], name="softmax", axis=-1),
        helper.make_node("MatMul", ["probs", "v"], ["context"], name="attend"),
        helper.make_node("MatMul", ["context", "Wo"], ["output"], name="out_proj"),
    ]
    return _model(
        nodes,
        [
            helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 8, d]),
            helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["batch", 8]),
        ],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 8, d])],
        inits,
    )


def detection_head(seed: int = 0) -> onnx.ModelProto:
    """Box coordinates (0-320) concatenated with class scores (0-1), as detector exports do; the concat
    is an output and also feeds a 1x1 Conv ("refine")."""
    rng = _rng(seed)
    inits = [
        numpy_helper.from_array(_w(rng, 8, 4, 3, 3), "backbone.weight"),
        numpy_helper.from_array(_w(rng, 4, 8, 1, 1), "box.weight"),
        numpy_helper.from_array(_w(rng, 3, 8, 1, 1), "cls.weight"),
        numpy_helper.from_array(_w(rng, 6, 7, 1, 1), "refine.weight"),
        numpy_helper.from_array(np.array(320.0, np.float32), "image_size"),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "backbone.weight"], ["f"], name="backbone", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["f"], ["fr"], name="backbone_relu"),
        helper.make_node("Conv", ["fr", "box.weight"], ["b"], name="box"),
        helper.make_node("Sigmoid", ["b"], ["bs"], name="box_sigmoid"),
        helper.make_node("Mul", ["bs", "image_size"], ["boxes"], name="box_scale"),
        helper.make_node("Conv", ["fr", "cls.weight"], ["c"], name="cls"),
        helper.make_node("Sigmoid", ["c"], ["scores"], name="cls_sigmoid"),
        helper.make_node("Concat", ["boxes", "scores"], ["detections"], name="concat", axis=1),
        helper.make_node("Conv", ["detections", "refine.weight"], ["refined"], name="refine"),
    ]
    return _model(
        nodes,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4, 8, 8])],
        [
            helper.make_tensor_value_info("detections", TensorProto.FLOAT, ["batch", 7, 8, 8]),
            helper.make_tensor_value_info("refined", TensorProto.FLOAT, ["batch", 6, 8, 8]),
        ],
        inits,
    )


def contrib_op_weight(seed: int = 0) -> onnx.ModelProto:
    """A MatMul, then a custom-domain op (com.microsoft::FusedMatMul, which onnxruntime runs) reading a weight."""
    rng = _rng(seed)
    nodes = [
        helper.make_node("MatMul", ["input", "W1"], ["h"], name="mm"),
        helper.make_node("FusedMatMul", ["h", "W2"], ["output"], name="fused", domain="com.microsoft", alpha=1.0),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 16])],
        [numpy_helper.from_array(_w(rng, 16, 32), "W1"), numpy_helper.from_array(_w(rng, 32, 16), "W2")],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("com.microsoft", 1)],
        producer_name="onnxshrink-tests",
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def qdq_quantized(seed: int = 0) -> onnx.ModelProto:
    """An already quantized model: int8 weight → DequantizeLinear (per-channel) → MatMul."""
    rng = _rng(seed)
    weight = _w(rng, 16, 16)
    scale = (np.abs(weight).max(axis=0) / 127).astype(np.float32)
    quantized = np.round(weight / scale).astype(np.int8)
    nodes = [
        helper.make_node("DequantizeLinear", ["W_quantized", "W_scale"], ["W"], name="dequantize", axis=1),
        helper.make_node("MatMul", ["input", "W"], ["output"], name="mm"),
    ]
    return _model(
        nodes,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 16])],
        [numpy_helper.from_array(quantized, "W_quantized"), numpy_helper.from_array(scale, "W_scale")],
    )


def conv_opset11(seed: int = 0) -> onnx.ModelProto:
    """Conv → Relu → Conv → GlobalAveragePool → Flatten → Gemm at opset 11 (per-axis DequantizeLinear needs 13)."""
    rng = _rng(seed)
    inits = [
        numpy_helper.from_array(_w(rng, 8, 2, 3, 3), "conv1.weight"),
        numpy_helper.from_array(_w(rng, 8, 8, 3, 3), "conv2.weight"),
        numpy_helper.from_array(_w(rng, 10, 8), "fc.weight"),
        numpy_helper.from_array(_w(rng, 10), "fc.bias"),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "conv1.weight"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "conv2.weight"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("GlobalAveragePool", ["c2"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc.weight", "fc.bias"], ["logits"], name="fc", transB=1),
    ]
    return _model(
        nodes,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 2, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        inits,
        opset=11,
    )


def loop_subgraph(seed: int = 0) -> onnx.ModelProto:
    """A Loop (2 iterations) whose body reads an outer weight and holds one of its own."""
    rng = _rng(seed)
    body = helper.make_graph(
        [
            helper.make_node("MatMul", ["state", "W_outer"], ["h"], name="body_outer_mm"),
            helper.make_node("Tanh", ["h"], ["t"], name="body_tanh"),
            helper.make_node("MatMul", ["t", "W_body"], ["state_out"], name="body_inner_mm"),
            helper.make_node("Identity", ["cond_in"], ["cond_out"], name="body_cond"),
        ],
        "loop_body",
        [
            helper.make_tensor_value_info("iteration", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("state", TensorProto.FLOAT, ["batch", 16]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("state_out", TensorProto.FLOAT, ["batch", 16]),
        ],
        [numpy_helper.from_array(_w(rng, 16, 16), "W_body")],
    )
    nodes = [helper.make_node("Loop", ["trip_count", "keep_going", "input"], ["output"], name="loop", body=body)]
    return _model(
        nodes,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 16])],
        [
            numpy_helper.from_array(_w(rng, 16, 16), "W_outer"),
            numpy_helper.from_array(np.array(2, np.int64), "trip_count"),
            numpy_helper.from_array(np.array(True), "keep_going"),
        ],
    )


REFERENCE_GRAPHS.update(
    {
        "attention_with_mask": attention_with_mask,
        "detection_head": detection_head,
        "contrib_op_weight": contrib_op_weight,
        "qdq_quantized": qdq_quantized,
        "conv_opset11": conv_opset11,
        "loop_subgraph": loop_subgraph,
    }
)


def dynamic_dims(seed: int = 0) -> onnx.ModelProto:
    """Batch, height and width all dynamic, and a Reshape whose shape comes from Shape at run time
    (Conv features → tokens → projection, as exported vision transformers do)."""
    rng = _rng(seed)
    inits = [
        numpy_helper.from_array(_w(rng, 8, 4, 3, 3), "patch.weight"),
        numpy_helper.from_array(_w(rng, 8, 16), "proj.weight"),
        numpy_helper.from_array(_w(rng, 16), "proj.bias"),
        numpy_helper.from_array(np.array([0], np.int64), "start0"),
        numpy_helper.from_array(np.array([2], np.int64), "end2"),
        numpy_helper.from_array(np.array([-1], np.int64), "minus1"),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "patch.weight"], ["f"], name="patch", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["f"], ["fr"], name="patch_relu"),
        helper.make_node("Shape", ["fr"], ["f_shape"], name="shape"),
        helper.make_node("Slice", ["f_shape", "start0", "end2"], ["batch_channels"], name="batch_channels"),
        helper.make_node("Concat", ["batch_channels", "minus1"], ["token_shape"], name="token_shape", axis=0),
        helper.make_node("Reshape", ["fr", "token_shape"], ["flat"], name="flatten"),
        helper.make_node("Transpose", ["flat"], ["tokens"], name="to_tokens", perm=[0, 2, 1]),
        helper.make_node("MatMul", ["tokens", "proj.weight"], ["p"], name="proj"),
        helper.make_node("Add", ["p", "proj.bias"], ["output"], name="proj_bias"),
    ]
    return _model(
        nodes,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4, "height", "width"])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", "tokens", 16])],
        inits,
    )


REFERENCE_GRAPHS["dynamic_dims"] = dynamic_dims


def tiny_transformer(seed: int = 0, d: int = 32, heads: int = 4, ff: int = 64, blocks: int = 2) -> onnx.ModelProto:
    """8x8 image → 16 patch tokens → pre-LN blocks (explicit MatMul attention with Reshape/Transpose
    heads, GELU MLP written out with Erf) → LN → mean over tokens → Gemm, as the TorchScript exporter
    writes them (models/transformer.onnx in miniature)."""
    rng = _rng(seed)
    tokens, head_dim = 16, d // heads
    inits: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []

    def const(name: str, value) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(op: str, inputs: list[str], output: str, **attrs) -> str:
        nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output

    def linear(prefix: str, x: str, n_in: int, n_out: int) -> str:
        w = const(f"{prefix}.weight", _w(rng, n_in, n_out, scale=n_in**-0.5))
        b = const(f"{prefix}.bias", _w(rng, n_out, scale=0.02))
        return node("Add", [node("MatMul", [x, w], f"{prefix}.matmul"), b], f"{prefix}.out")

    def layernorm(prefix: str, x: str) -> str:
        scale = const(f"{prefix}.scale", (1 + 0.1 * rng.standard_normal(d)).astype(np.float32))
        bias = const(f"{prefix}.bias", _w(rng, d, scale=0.02))
        return node("LayerNormalization", [x, scale, bias], f"{prefix}.out", axis=-1, epsilon=1e-5)

    x = node("Reshape", ["input", const("patch_shape", np.array([-1, 4, 2, 4, 2], np.int64))], "patches5d")
    x = node("Transpose", [x], "patches_t", perm=[0, 1, 3, 2, 4])
    x = node("Reshape", [x, const("token_shape", np.array([-1, tokens, 4], np.int64))], "patches")
    x = node("Add", [linear("embed", x, 4, d), const("pos", _w(rng, 1, tokens, d, scale=0.02))], "h0")
    split_shape = np.array([-1, tokens, heads, head_dim], np.int64)
    for b in range(blocks):
        p = f"blocks.{b}"
        n = layernorm(f"{p}.ln1", x)
        q, k, v = (
            node(
                "Transpose",
                [
                    node(
                        "Reshape",
                        [linear(f"{p}.attn.{t}", n, d, d), const(f"{p}.attn.{t}_shape", split_shape)],
                        f"{p}.attn.{t}_heads",
                    )
                ],
                f"{p}.attn.{t}_t",
                perm=[0, 2, 1, 3],
            )
            for t in ("q", "k", "v")
        )
        kt = node("Transpose", [k], f"{p}.attn.kT", perm=[0, 1, 3, 2])
        scores = node(
            "Mul",
            [node("MatMul", [q, kt], f"{p}.attn.qk"), const(f"{p}.attn.scale", np.array(head_dim**-0.5, np.float32))],
            f"{p}.attn.scores",
        )
        probs = node("Softmax", [scores], f"{p}.attn.probs", axis=-1)
        context = node(
            "Transpose", [node("MatMul", [probs, v], f"{p}.attn.context")], f"{p}.attn.context_t", perm=[0, 2, 1, 3]
        )
        merged = node(
            "Reshape",
            [context, const(f"{p}.attn.merge_shape", np.array([-1, tokens, d], np.int64))],
            f"{p}.attn.merged",
        )
        x = node("Add", [x, linear(f"{p}.attn.proj", merged, d, d)], f"{p}.residual1")
        h = linear(f"{p}.fc1", layernorm(f"{p}.ln2", x), d, ff)
        erf = node(
            "Erf",
            [node("Div", [h, const(f"{p}.sqrt2", np.array(2**0.5, np.float32))], f"{p}.gelu.div")],
            f"{p}.gelu.erf",
        )
        gate = node("Add", [erf, const(f"{p}.one", np.array(1.0, np.float32))], f"{p}.gelu.add")
        gelu = node(
            "Mul",
            [node("Mul", [h, gate], f"{p}.gelu.mul"), const(f"{p}.half", np.array(0.5, np.float32))],
            f"{p}.gelu.out",
        )
        x = node("Add", [x, linear(f"{p}.fc2", gelu, ff, d)], f"{p}.residual2")
    pooled = node("ReduceMean", [layernorm("ln", x)], "pooled", axes=[1], keepdims=0)
    head_w, head_b = const("head.weight", _w(rng, 10, d, scale=d**-0.5)), const("head.bias", _w(rng, 10, scale=0.02))
    nodes.append(helper.make_node("Gemm", [pooled, head_w, head_b], ["logits"], name="head", transB=1))
    return _model(
        nodes,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        inits,
    )


REFERENCE_GRAPHS["tiny_transformer"] = tiny_transformer


def external_data(seed: int = 0) -> onnx.ModelProto:
    """Gemm → Relu → MatMul + Add (16 → 48 → 10) whose weights the conformance kit saves in an
    external-data file and hands to the method unread, the way onnxshrink edits models whose external
    data exceeds ``ONNXSHRINK_LAZY_BYTES`` (each tensor read from disk when asked for). In memory here."""
    return mlp(seed=seed, hidden=48, prefix="ext.")


REFERENCE_GRAPHS["external_data"] = external_data

EXTERNAL_DATA_GRAPHS = frozenset({"external_data"})
"""Reference graphs the conformance kit stores with external data before handing them to a method."""

HARD_GRAPHS: dict[str, str] = {
    "if_subgraph": "weights inside If branches",
    "loop_subgraph": "weights inside a Loop body",
    "constant_node_weights": "weights held in Constant nodes",
    "shared_weight": "one weight read by two nodes",
    "external_data": "weights in an external-data file, read lazily",
}
"""The reference graphs where real exports break optimizers; the kit fails a method that changes none of them."""
