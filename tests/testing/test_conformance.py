"""The conformance kit: every built-in method passes it, and it catches each kind of broken method."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxshrink
from onnxshrink import Method, Option
from onnxshrink.plugin.registry import load_registry
from onnxshrink.testing import (
    HARD_GRAPHS,
    REFERENCE_GRAPHS,
    ConformanceError,
    check_method,
    check_options_documented,
    run_method,
    shipped_models,
)

REGISTRY = load_registry()
BUILTINS = sorted(name for name, info in REGISTRY.methods.items() if info.builtin)

# Built-in methods whose DEFAULT options break conformance checks: method -> {(check, graph or None for
# any graph): why}. Every other check must still hold on every graph. Remove an entry once it is fixed.
KNOWN_VIOLATIONS = {
    "int_quant": {
        ("deterministic", None): (
            "mode=auto (the default) picks a representation by measured latency, so two runs can differ "
            "(its docstring says so); pinned modes pass"
        ),
    },
}

# Built-in methods that are right to leave every hard graph (If/Loop, Constant-node weights, shared
# weights, external data) unchanged, with the reason the kit is given.
HARD_GRAPHS_INTENDED_UNCHANGED = {
    "layer_prune": "removes residual blocks and no-op nodes; the hard reference graphs have neither",
}


# Built-in methods whose defaults rightly leave every dense test graph unchanged: the kit runs them with
# options that make them act (sparse_store stores only sparse weights; these graphs have none;
# weight_prune's budget default prunes only where a bitmask shrinks the file by at least 1%, which the
# tiny reference graphs never allow: tests/methods/test_prune_budget.py covers that default).
KIT_OPTIONS = {"sparse_store": {"bits": "4", "min_sparsity": "0"}, "weight_prune": {"sparsity": "0.5"}}


# Built-in methods that only rewrite weights that are already integer: the reference graphs and shipped
# models hold none they can shrink, so the kit checks they leave them valid and unchanged; their own tests
# run the kit on integer graphs (tests/methods/test_requantize.py, test_int_pack.py).
INTEGER_ONLY = {
    "requantize": "rewrites int8/uint8 weights only; the float graphs and models have none",
    "int_pack": "packs int8 tensors only; the float graphs and models have none",
}


# Built-in methods too slow for the default suite on the shipped models (run by `make test-slow`).
SLOW_ON_MODELS = {
    "int_quant": "mode=auto builds and times every representation on each model, twice (measured about 15 s)",
    "gptq": "calibrates every layer of each model, twice (measured about 20 s)",
}


def test_there_are_builtin_methods_to_check():
    assert {"weight_prune", "int_quant"} <= set(BUILTINS)


def conforms(name, graphs, models):
    """Run the kit; a method in KNOWN_VIOLATIONS may fail its known checks, and only those."""
    options = KIT_OPTIONS.get(name)
    intended = HARD_GRAPHS_INTENDED_UNCHANGED.get(name)
    if name in INTEGER_ONLY:
        report = check_method(
            name,
            options,
            graphs=graphs,
            models=models,
            registry=REGISTRY,
            require_change=False,
            hard_graphs_intended_unchanged=INTEGER_ONLY[name],
        )
        assert not report.changed, report
        return
    if name not in KNOWN_VIOLATIONS:
        report = check_method(
            name, options, graphs=graphs, models=models, registry=REGISTRY, hard_graphs_intended_unchanged=intended
        )
        assert report.changed, report
        return
    allowed = KNOWN_VIOLATIONS[name]
    cases = [{"graphs": [g], "models": []} for g in graphs] + [{"graphs": [], "models": [m]} for m in models]
    broken, changed, hard_changed = [], [], []
    for where in cases:  # one graph at a time, so every graph is checked past the known failure
        try:
            report = check_method(
                name,
                options,
                registry=REGISTRY,
                require_change=False,
                hard_graphs_intended_unchanged="checked below",
                **where,
            )
            changed += report.changed
            hard_changed += report.hard_changed
        except ConformanceError as exc:
            known = (exc.check, None) in allowed or (exc.check, exc.graph) in allowed
            assert known, f"{exc} (known violations of {name}: {sorted(allowed)})"
            broken.append(f"{exc.graph} ({exc.check})")
    assert changed or broken, f"{name} changed none of the graphs"
    if graphs and any(g in HARD_GRAPHS for g in graphs):
        assert hard_changed or intended, f"{name} changed none of the hard graphs"
    if broken:
        pytest.xfail(f"{name} breaks known checks on {', '.join(broken)}: {'; '.join(allowed.values())}")


@pytest.mark.parametrize("name", BUILTINS)
def test_builtin_method_passes_the_kit_on_reference_graphs(name):
    conforms(name, list(REFERENCE_GRAPHS), [])


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_ON_MODELS else n for n in BUILTINS]
)
def test_builtin_method_passes_the_kit_on_shipped_models(name):
    models = shipped_models()
    assert {"cnn.onnx", "mlp.onnx", "transformer.onnx"} <= {p.name for p in models}, f"models/ is incomplete: {models}"
    conforms(name, [], models)


def test_int_quant_pinned_mode_passes_the_kit():
    report = check_method("int_quant", {"mode": "storage"}, registry=REGISTRY, models=[])
    assert "graph 'if_subgraph'" in report.changed and report.outcomes["graph 'qdq_quantized'"] == "unchanged", report


# ------------------------------------------------------------------------------------------------
# Deliberately broken methods: each must be caught by the check it breaks.


class ScaleWeights(Method):
    """Multiply every Conv/Gemm/MatMul weight by a factor (a correct method the broken ones build on)."""

    name = "scale_weights"
    kind = "transform"
    options = (Option("factor", float, 0.5, "What to multiply the weights by."),)

    def apply(self, model, options, context):
        weights = onnxshrink.weight_tensors(model)
        for w in weights:
            if w.source != "overridable":
                w.set_array(w.array() * options["factor"])
        return {"scaled": len(weights)}


def check(method, **kwargs):
    return check_method(method, models=[], **kwargs)


def test_a_correct_method_passes():
    report = check(ScaleWeights)
    assert "graph 'qdq_quantized'" in report.skipped and "graph 'mlp'" in report.changed


def test_mutating_the_calibration_feeds_is_caught():
    class NormalizesFeedsInPlace(ScaleWeights):
        """Scale weights, but first normalize the calibration data in place (the feeds are shared)."""

        def apply(self, model, options, context):
            for feed in context.calibration_feeds():
                for array in feed.values():
                    if np.issubdtype(array.dtype, np.floating):
                        array *= 2
            return super().apply(model, options, context)

    with pytest.raises(ConformanceError) as info:
        check(NormalizesFeedsInPlace)
    assert info.value.check == "input not mutated" and "modified in place" in str(info.value)
    assert "'scale_weights'" in str(info.value) and "graph 'mlp'" in str(info.value)


def test_editing_a_model_the_method_was_not_given_is_caught():
    kept: list[onnx.ModelProto] = []

    class EditsAnEarlierModel(ScaleWeights):
        """Scale weights, and also 'fix up' the model it saw on its previous call."""

        def apply(self, model, options, context):
            if kept:
                kept[-1].doc_string = "touched later"
            kept.append(model)
            return super().apply(model, options, context)

    with pytest.raises(ConformanceError) as info:
        check(EditsAnEarlierModel)
    assert info.value.check == "deterministic" and "keeps state between runs" in str(info.value)


def test_unseeded_randomness_is_caught_and_context_rng_passes():
    class Unseeded(ScaleWeights):
        """Add noise from an unseeded generator."""

        def apply(self, model, options, context):
            for w in onnxshrink.weight_tensors(model):
                if w.source != "overridable":
                    w.set_array(w.array() + np.random.default_rng().normal(0, 1e-3, w.shape))
            return {}

    class Seeded(ScaleWeights):
        """Add noise from the run's seeded generator."""

        def apply(self, model, options, context):
            for w in onnxshrink.weight_tensors(model):
                if w.source != "overridable":
                    w.set_array(w.array() + context.rng.normal(0, 1e-3, w.shape))
            return {}

    with pytest.raises(ConformanceError) as info:
        check(Unseeded)
    assert info.value.check == "deterministic" and "gave different models (first difference: initializer" in str(
        info.value
    )
    check(Seeded)


def test_invalid_output_is_caught():
    class DanglingInput(ScaleWeights):
        """Point a node at a tensor that does not exist."""

        def apply(self, model, options, context):
            model.graph.node[0].input[0] = "no_such_tensor"
            return {}

    with pytest.raises(ConformanceError) as info:
        check(DanglingInput)
    assert info.value.check == "valid output" and "invalid model" in str(info.value)


def test_output_onnxruntime_cannot_load_is_caught():
    class UnknownOp(ScaleWeights):
        """Insert an op from a domain no runtime knows."""

        def apply(self, model, options, context):
            first = model.graph.input[0].name
            for node in model.graph.node:  # every reader of the input now reads the unknown op's output
                node.input[:] = ["mystery_out" if name == first else name for name in node.input]
            model.graph.node.insert(0, helper.make_node("Mystery", [first], ["mystery_out"], domain="com.example"))
            model.opset_import.append(helper.make_opsetid("com.example", 1))
            return {}

    with pytest.raises(ConformanceError) as info:
        check(UnknownOp, graphs=["mlp"])
    assert info.value.check == "valid output"


def test_undocumented_option_is_caught():
    class Undocumented(ScaleWeights):
        """Scale weights with an undocumented knob."""

        options = (*ScaleWeights.options, Option("secret", int, 1, ""))

    with pytest.raises(ConformanceError) as info:
        check(Undocumented)
    assert info.value.check == "documented options" and "'secret' has no doc" in str(info.value)


@pytest.mark.parametrize(
    "option, message",
    [
        (Option("bits", int, 3, "Bits.", choices=(2, 4, 8)), "must be one of"),
        (Option("ratio", float, 1.5, "Ratio.", min=0.0, max=1.0), "between"),
        (Option("ratio", float, "half", "Ratio."), "expects float"),
        (Option("flag", bool, "yes", "A flag."), "not a bool"),
    ],
)
def test_illegal_default_is_caught(option, message):
    cls = type("IllegalDefault", (ScaleWeights,), {"__doc__": "Scale weights.", "options": (option,)})
    with pytest.raises(ConformanceError) as info:
        check_options_documented(cls)
    assert info.value.check == "documented options" and message in str(info.value)


def test_defaults_that_fail_cross_option_validation_are_caught():
    class Contradiction(ScaleWeights):
        """Scale weights; factor and offset cannot both be set, but both defaults are."""

        options = (*ScaleWeights.options, Option("offset", float, 1.0, "Added to weights."))

        @classmethod
        def check_options(cls, values, given):
            if values["factor"] is not None and values["offset"] is not None:
                raise cls.option_error("give factor or offset, not both")

    with pytest.raises(ConformanceError, match="the default options do not validate: .*factor or offset"):
        check(Contradiction)


def reroute_output(model, op_type, **attrs):
    """Make the first graph output come from a new ``op_type`` node reading what produced it before."""
    out = model.graph.output[0]
    for node in model.graph.node:
        node.output[:] = ["before_edit" if o == out.name else o for o in node.output]
    inputs = ["before_edit", *attrs.pop("extra_inputs", [])]
    model.graph.node.append(helper.make_node(op_type, inputs, [out.name], **attrs))
    return out


def rename_output(model):
    reroute_output(model, "Identity").name = "renamed"
    model.graph.node[-1].output[0] = "renamed"


def output_to_float16(model):
    reroute_output(model, "Cast", to=TensorProto.FLOAT16).type.tensor_type.elem_type = TensorProto.FLOAT16


def output_rank_plus_one(model):
    model.graph.initializer.append(numpy_helper.from_array(np.array([0], np.int64), "axis0"))
    out = reroute_output(model, "Unsqueeze", extra_inputs=["axis0"])
    dims = [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim]
    out.CopyFrom(helper.make_tensor_value_info(out.name, out.type.tensor_type.elem_type, [1, *dims]))


@pytest.mark.parametrize(
    "edit, detail",
    [(rename_output, "'renamed'"), (output_to_float16, "FLOAT -> FLOAT16"), (output_rank_plus_one, "rank 2 -> 3")],
)
def test_changed_output_name_dtype_or_rank_is_caught(edit, detail):
    class ChangesInterface(ScaleWeights):
        """Scale weights and change the graph's output."""

        def apply(self, model, options, context):
            edit(model)
            return {}

    with pytest.raises(ConformanceError) as info:
        check(ChangesInterface, graphs=["mlp"])
    assert info.value.check == "interface kept" and detail in str(info.value)


def test_output_shape_that_differs_at_run_time_is_caught():
    class SwapsTokenAxes(ScaleWeights):
        """Transpose the output: the declared rank holds, the shape at run time does not."""

        def apply(self, model, options, context):
            reroute_output(model, "Transpose", perm=[0, 2, 1])
            return {}

    with pytest.raises(ConformanceError) as info:
        check(SwapsTokenAxes, graphs=["dynamic_dims"])
    assert info.value.check == "runs in onnxruntime" and "output 'output'" in str(info.value)


def test_method_that_crashes_is_caught():
    class Crashes(ScaleWeights):
        """Fail on subgraphs."""

        def apply(self, model, options, context):
            if any(n.op_type == "If" for n in model.graph.node):
                raise KeyError("then_branch")
            return super().apply(model, options, context)

    with pytest.raises(ConformanceError) as info:
        check(Crashes)
    assert (
        info.value.check == "runs in the pipeline"
        and "graph 'if_subgraph'" in str(info.value)
        and "KeyError" in str(info.value)
    )


def test_a_no_op_is_caught_unless_allowed():
    class Nothing(ScaleWeights):
        """Do nothing."""

        def apply(self, model, options, context):
            context.warn("nothing to do")
            return {}

    with pytest.raises(ConformanceError, match="changed none of"):
        check(Nothing)
    report = check(Nothing, require_change=False, graphs=["mlp"])
    assert report.skipped == {"graph 'mlp'": "unchanged: nothing to do"}


class PlainWeightsOnly(ScaleWeights):
    """Scale weights, but only plain, unshared initializers of the main graph (skips every hard case)."""

    def apply(self, model, options, context):
        hard = any(n.op_type in ("If", "Loop", "Constant") for n in model.graph.node)
        names = [i for n in model.graph.node for i in n.input]
        shared = any(names.count(t.name) > 1 for t in model.graph.initializer)
        external = any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
        if hard or shared or external:
            context.warn("only plain weights are handled")
            return {}
        return super().apply(model, options, context)


def test_a_method_that_skips_every_hard_graph_is_caught():
    with pytest.raises(ConformanceError) as info:
        check(PlainWeightsOnly)
    assert info.value.check == "changes a hard graph"
    for graph in HARD_GRAPHS:
        assert f"graph '{graph}'" in str(info.value)
    assert "only plain weights are handled" in str(info.value) and "hard_graphs_intended_unchanged" in str(info.value)


def test_hard_graphs_left_alone_on_purpose_pass_with_the_reason_and_say_so():
    report = check(PlainWeightsOnly, hard_graphs_intended_unchanged="a demo that handles plain weights only")
    assert report.hard_changed == [] and "graph 'mlp'" in report.changed
    text = str(report)
    assert "0 of 5 hard ones" in text and "as intended: a demo that handles plain weights only" in text
    for graph in REFERENCE_GRAPHS:  # every graph is listed, changed or skipped with its reason
        assert f"graph '{graph}'" in text
    assert "graph 'if_subgraph' [hard: weights inside If branches]: unchanged: only plain weights are handled" in text
    with pytest.raises(ValueError, match="needs the reason"):
        check(PlainWeightsOnly, hard_graphs_intended_unchanged=" ")


def test_external_data_graph_is_handed_over_unread_and_can_be_changed():
    seen = []

    class RecordsExternal(ScaleWeights):
        """Scale weights, recording whether they arrived in an external-data file."""

        def apply(self, model, options, context):
            seen.append(any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer))
            return super().apply(model, options, context)

    report = check(RecordsExternal, graphs=["external_data"])
    assert seen and all(seen) and report.outcomes == {"graph 'external_data'": "changed"} and report.hard_changed


def test_refusals_are_reported_not_failed():
    class RefusesSubgraphs(ScaleWeights):
        """Scale weights, refusing models with If nodes."""

        def apply(self, model, options, context):
            if any(n.op_type == "If" for n in model.graph.node):
                raise onnxshrink.UsageError("If nodes are not supported")
            return super().apply(model, options, context)

    report = check(RefusesSubgraphs)
    assert report.outcomes["graph 'if_subgraph'"] == "refused"
    assert report.skipped["graph 'if_subgraph'"] == "refused: If nodes are not supported"


def test_models_folder_cases_use_their_calibration_data(tmp_path):
    onnx.save(REFERENCE_GRAPHS["mlp"](), tmp_path / "tiny.onnx")
    samples = np.random.default_rng(5).random((20, 16)).astype(np.float32)
    np.savez(tmp_path / "tiny_calib.npz", input=samples, labels=np.zeros(20, np.int64))

    class RecordsCalibration(ScaleWeights):
        """Scale weights and report the first calibration value."""

        def apply(self, model, options, context):
            feeds = context.calibration_feeds()
            stats = super().apply(model, options, context)
            return {
                **stats,
                "synthetic": context.calibration_is_synthetic,
                "first": float(feeds[0]["input"][0, 0]),
                "rows": [len(f["input"]) for f in feeds],
            }

    report = check_method(RecordsCalibration, graphs=[], models=tmp_path)
    [result] = report.results
    assert result.graph == "model 'tiny.onnx'"
    assert result.stats["synthetic"] is False and result.stats["first"] == pytest.approx(float(samples[0, 0]))
    assert result.stats["rows"] == [8, 8]


def test_run_method_applies_one_step_like_the_cli():
    model = REFERENCE_GRAPHS["mlp"]()
    before = onnx.numpy_helper.to_array(model.graph.initializer[0])
    result = run_method(ScaleWeights, model, {"factor": "2"})
    assert result.stats == {"scaled": 2}
    np.testing.assert_array_equal(onnx.numpy_helper.to_array(model.graph.initializer[0]), before * 2)
    with pytest.raises(onnxshrink.UsageError, match="option 'factor' expects float"):
        run_method(ScaleWeights, model, {"factor": "lots"})


def test_error_message_is_one_line_naming_method_graph_and_check():
    class DanglingInput(ScaleWeights):
        """Point a node at a tensor that does not exist."""

        def apply(self, model, options, context):
            model.graph.node[0].input[0] = "no_such_tensor"
            return {}

    with pytest.raises(AssertionError) as info:
        check(DanglingInput)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("method 'scale_weights' on graph 'mlp': check 'valid output' failed: ")
