"""Option parsing and validation: typed values, defaults, bad keys and values named in one line."""

from __future__ import annotations

import onnx
import pytest

from onnxshrink import Method, Option
from onnxshrink.errors import UsageError
from onnxshrink.plugin.method import check_method_class, parse_plugin_spec
from tests.support.cli import assert_one_line_error
from tests.support.files import MODELS


class Demo(Method):
    """A demo method."""

    name = "demo"
    kind = "transform"
    options = (
        Option("ratio", float, 0.5, "A fraction.", min=0.0, max=1.0),
        Option("count", int, 3, "A count.", min=1),
        Option("mode", str, "a", "A mode.", choices=("a", "b")),
        Option("flag", bool, False, "A flag."),
        Option("names", list, None, "Some names."),
    )

    def apply(self, model, options, context):
        return {}


def test_spec_parsing_keeps_commas_inside_brackets():
    spec = parse_plugin_spec("demo:ratio=0.7,names=[conv1,conv2],mode=b")
    assert spec.plugin == "demo"
    assert spec.options == {"ratio": "0.7", "names": "[conv1,conv2]", "mode": "b"}
    assert parse_plugin_spec("demo").options == {}


@pytest.mark.parametrize("text", ["", ":a=1", "demo:", "demo:ratio", "demo:ratio=1,ratio=2"])
def test_bad_specs_are_usage_errors(text):
    with pytest.raises(UsageError):
        parse_plugin_spec(text)


def test_values_are_typed_and_defaults_filled():
    values = Demo.validate_options({"ratio": "0.25", "count": "7", "flag": "true", "names": "[x,y]"})
    assert values == {"ratio": 0.25, "count": 7, "mode": "a", "flag": True, "names": ["x", "y"]}
    # recipe (TOML) values arrive typed already
    assert Demo.validate_options({"ratio": 1, "flag": False, "names": ["z"]})["names"] == ["z"]


@pytest.mark.parametrize(
    "raw, fragments",
    [
        ({"ratoi": "1"}, ["unknown option 'ratoi'", "known options: count, flag, mode, names, ratio"]),
        ({"ratio": "1.5"}, ["'ratio'", "between 0.0 and 1.0", "1.5"]),
        ({"ratio": "abc"}, ["'ratio'", "expects float", "'abc'"]),
        ({"ratio": "nan"}, ["'ratio'", "expects float"]),
        ({"count": "2.5"}, ["'count'", "expects int"]),
        ({"count": "0"}, ["'count'", ">= 1", "(got 0)"]),
        ({"mode": "c"}, ["'mode'", "one of a, b", "'c'"]),
        ({"flag": "maybe"}, ["'flag'", "expects bool"]),
    ],
)
def test_bad_values_name_plugin_key_and_allowed_values(raw, fragments):
    with pytest.raises(UsageError) as info:
        Demo.validate_options(raw)
    message = str(info.value)
    assert message.startswith("plugin 'demo':") and "\n" not in message
    for fragment in fragments:
        assert fragment in message


def test_method_class_checks():
    assert check_method_class(Demo) is None
    assert "not a subclass" in check_method_class(object)

    class NoDoc(Demo):
        name = "nodoc"

    NoDoc.__doc__ = None
    assert "docstring" in check_method_class(NoDoc)

    class Undocumented(Demo):
        """Has a doc."""

        options = (Option("x", int, 1, ""),)

    assert "has no doc" in check_method_class(Undocumented)


@pytest.mark.parametrize("method", ["binarize", "gptq", "int_quant", "sparse_store"])
def test_an_exclude_entry_that_names_nothing_is_refused(method, cli, tmp_path):
    """Method.check_exclude: one refusal, the same words for every method that takes exclude=."""
    output = tmp_path / "out.onnx"
    result = cli(MODELS / "mlp.onnx", "--plugin", f"{method}:exclude=[no_such_node]", "-o", output, "--no-validate")
    assert_one_line_error(
        result, 2, f"plugin '{method}': exclude entry 'no_such_node' matches no node name, op type or tensor"
    )
    assert not output.exists()


def test_check_exclude_accepts_node_labels_op_types_and_tensors(write_model):
    class Excluding(Method):
        """Takes exclude= (a test method)."""

        name = "excluding"
        kind = "transform"
        options = (Option("exclude", list, None, "Names to leave alone."),)

    model = onnx.load(write_model("mlp"))
    node = model.graph.node[0]
    Excluding.check_exclude(model, [node.op_type, node.input[0]])
    Excluding.check_exclude(model, None)
    with pytest.raises(UsageError, match="plugin 'excluding': exclude entry 'nope' matches no node"):
        Excluding.check_exclude(model, ["nope"])
