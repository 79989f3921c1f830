"""Options: the typed, frozen object apply() receives (attribute access, a dict for every old use),
and conditions declared on an option (``Option.only_with``), enforced and shown by ``onnxshrink plugins``."""

from __future__ import annotations

import ast
import copy
import json
import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import onnx
import pytest

import onnxshrink
from onnxshrink import Method, Option, Options, UsageError
from onnxshrink.plugin.method import check_method_class
from onnxshrink.plugin.registry import MethodInfo
from onnxshrink.run.pipeline import PreparedStep, run_steps
from onnxshrink.testing import REFERENCE_GRAPHS
from tests.support.files import ROOT, sha256


class Modes(Method):
    """Clear doc strings; options with declared conditions (a test method)."""

    name = "modes_demo"
    kind = "transform"
    options = (
        Option("mode", str, "a", "a, b or c.", choices=("a", "b", "c")),
        Option("flag", bool, False, "A switch."),
        Option("level", int, 1, "Only for mode=b or c.", min=0, only_with={"mode": ("b", "c")}),
        Option("fine", float, 0.5, "Only for mode=c with flag=true.", only_with={"mode": "c", "flag": (True,)}),
        Option("names", list, None, "Some names."),
    )
    seen: list[Any] = []

    def apply(self, model: onnx.ModelProto, options: Options, context: onnxshrink.Context) -> dict[str, Any]:
        Modes.seen.append(options)
        for node in model.graph.node:
            node.doc_string = ""
        return {"mode": options.mode, "level": options["level"], "names": options.get("names")}


def test_attribute_and_mapping_access():
    options = Modes.validate_options({"mode": "b", "level": "3", "names": "[x,y]"})
    assert isinstance(options, Options) and isinstance(options, Mapping) and isinstance(options, dict)
    assert options.mode == options["mode"] == "b" and options.level == 3 and options.names == ["x", "y"]
    assert options.get("fine") == 0.5 and options.get("absent", 7) == 7
    plain = {"mode": "b", "flag": False, "level": 3, "fine": 0.5, "names": ["x", "y"]}
    assert options == plain and dict(options) == plain and {**options} == plain
    assert list(options) == list(plain) and list(options.items()) == list(plain.items()) and len(options) == 5
    assert json.dumps(options) == json.dumps(plain)  # the report's JSON is byte-identical
    assert repr(options).endswith("method='modes_demo')")


def test_options_are_frozen_and_replace_makes_a_copy():
    options = Modes.validate_options({})
    for write in (
        lambda: options.__setitem__("mode", "b"),
        lambda: options.update(mode="b"),
        lambda: options.pop("mode"),
        lambda: options.setdefault("x", 1),
        lambda: options.clear(),
        lambda: options.popitem(),
        lambda: options.__delitem__("mode"),
    ):
        with pytest.raises(TypeError, match="options of method 'modes_demo' are read-only"):
            write()
    with pytest.raises(AttributeError, match="read-only"):
        options.mode = "b"
    with pytest.raises(AttributeError, match="read-only"):
        del options.mode
    assert options.mode == "a" and len(options) == 5
    changed = options.replace(mode="c", level=2)
    assert changed.mode == "c" and changed.level == 2 and options.mode == "a" and isinstance(changed, Options)
    with pytest.raises(AttributeError, match="method 'modes_demo' has no option 'levl'"):
        options.replace(levl=2)
    mutable = dict(options)
    mutable["mode"] = "b"
    assert options.mode == "a" and type(options.copy()) is dict


def test_unknown_option_names_the_option_and_the_method():
    options = Modes.validate_options({})
    with pytest.raises(
        AttributeError,
        match=r"method 'modes_demo' has no option 'levle'; known options: fine, flag, level, mode, names",
    ):
        _ = options.levle
    assert not hasattr(options, "_private") and getattr(options, "nope", 1) == 1


def test_options_pickle_and_copy_keep_the_method():
    options = Modes.validate_options({"mode": "c", "flag": "true", "fine": "0.25"})
    for clone in (pickle.loads(pickle.dumps(options)), copy.deepcopy(options), copy.copy(options)):
        assert type(clone) is Options and clone == options and repr(clone) == repr(options) and clone.fine == 0.25


@dataclass
class _Settings:
    mode: str
    level: int
    extra: str = "x"


def test_into_builds_a_dataclass_from_the_options_named_like_its_fields():
    options = Modes.validate_options({"mode": "b", "level": "4"})
    assert options.into(_Settings) == _Settings("b", 4)
    assert options.into(_Settings, extra="y", level=9) == _Settings("b", 9, "y")


def test_apply_receives_options_and_the_report_keeps_the_dict():
    info = MethodInfo(Modes, "modes_demo", "tests", "0")
    Modes.seen.clear()
    raw = {"mode": "b", "level": "2", "names": "[a]"}
    [result] = run_steps(REFERENCE_GRAPHS["mlp"](), [PreparedStep(info, Modes.validate_options(raw))])
    [received] = Modes.seen
    assert isinstance(received, Options) and received.level == 2 and "method='modes_demo'" in repr(received)
    assert result.stats == {"mode": "b", "level": 2, "names": ["a"]}
    report = result.to_dict()
    assert type(report["options"]) is dict
    plain = {"mode": "b", "flag": False, "level": 2, "fine": 0.5, "names": ["a"]}
    assert json.dumps(report["options"]) == json.dumps(plain)


def test_a_plain_dict_step_still_reaches_apply_as_options():
    info = MethodInfo(Modes, "modes_demo", "tests", "0")
    Modes.seen.clear()
    plain = {"mode": "a", "flag": False, "level": 1, "fine": 0.5, "names": None}
    run_steps(REFERENCE_GRAPHS["mlp"](), [PreparedStep(info, plain)])
    assert isinstance(Modes.seen[0], Options) and Modes.seen[0] == plain


@pytest.mark.parametrize(
    "raw,message",
    [
        ({"level": "2"}, r"plugin 'modes_demo': option 'level' only applies to mode=b or c \(mode=a\)$"),
        ({"mode": "b", "fine": "0.1"}, r"option 'fine' only applies to mode=c and flag=true \(mode=b\)$"),
        ({"mode": "c", "fine": "0.1"}, r"option 'fine' only applies to mode=c and flag=true \(flag=false\)$"),
    ],
)
def test_conditions_are_enforced_with_one_line(raw, message):
    with pytest.raises(UsageError, match=message) as caught:
        Modes.validate_options(raw)
    assert "\n" not in caught.value.message


def test_conditions_hold_only_for_given_options():
    assert Modes.validate_options({}).level == 1  # the default of an option out of its condition is fine
    assert Modes.validate_options({"mode": "c", "level": "0"}).level == 0
    assert Modes.validate_options({"mode": "c", "flag": "yes", "fine": "1"}).fine == 1.0


def test_condition_is_declared_and_described():
    level = Modes.option("level")
    assert level.only_with == (("mode", ("b", "c")),) and level.condition() == "mode=b or c"
    fine = Modes.option("fine")
    assert fine.only_with == (("mode", ("c",)), ("flag", (True,))) and fine.condition() == "mode=c and flag=true"
    assert fine.describe()["only_with"] == {"mode": ["c"], "flag": [True]}
    assert fine.describe()["condition"] == "mode=c and flag=true"
    assert "only_with" not in Modes.option("mode").describe()
    hash(fine)  # a frozen Option stays hashable with a condition


def test_registration_rejects_a_condition_on_an_unknown_option_or_value():
    class Broken(Modes):
        """Broken conditions."""

        options = (
            Option("mode", str, "a", "a or b.", choices=("a", "b")),
            Option("x", int, 1, "x.", only_with={"mdoe": "a"}),
        )

    assert check_method_class(Broken) == "method 'modes_demo': option 'x': only_with names unknown option 'mdoe'"
    Broken.options = (
        Option("mode", str, "a", "a or b.", choices=("a", "b")),
        Option("x", int, 1, "x.", only_with={"mode": "z"}),
    )
    assert "must be one of a, b (got 'z')" in check_method_class(Broken)
    Broken.options = (Option("x", int, 1, "x.", only_with={"x": 1}),)
    assert check_method_class(Broken) == "method 'modes_demo': option 'x': only_with names itself"
    assert check_method_class(Modes) is None


def test_cli_condition_error_exit_2_nothing_written(cli, tmp_path):
    source = ROOT / "models" / "mlp.onnx"
    before = sha256(source)
    out = tmp_path / "out.onnx"
    result = cli(source, "--plugin", "int_quant:mode=storage,calibration=entropy", "-o", out)
    assert result.exit_code == 2, result
    assert (
        "plugin 'int_quant': option 'calibration' only applies to mode=static or auto (mode=storage)" in result.stderr
    )
    assert "Traceback" not in result.stderr and not out.exists() and sha256(source) == before


def test_plugins_listing_shows_conditions(cli):
    listing = json.loads(cli("plugins", "--json").stdout)
    int_quant = {o["name"]: o for m in listing["methods"] if m["name"] == "int_quant" for o in m["options"]}
    assert int_quant["calibration"]["only_with"] == {"mode": ["static", "auto"]}
    assert int_quant["accuracy_level"]["condition"] == "mode=weights or auto and weights_format=matmulnbits"
    assert "only_with" not in int_quant["bits"]
    gptq = {o["name"]: o for m in listing["methods"] if m["name"] == "gptq" for o in m["options"]}
    assert gptq["act_order"]["only_with"] == {"algorithm": ["gptq"]}
    text = " ".join(cli("plugins").stdout.split())  # the table wraps long docs
    assert "Only with mode=static or auto." in text and "Only with variant=ternary." in text


def _option_calls(path):
    tree = ast.parse(path.read_text())
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "Option"]


def test_builtin_option_declarations_one_a_line_within_120_characters():
    sources = sorted((ROOT / "plugins" / "onnxshrink_plugins").rglob("*.py"))
    checked = 0
    for path in sources:
        lines = path.read_text().splitlines()
        starts = [call.lineno for call in _option_calls(path)]
        assert len(starts) == len(set(starts)), f"{path}: two Option(...) on one line"
        for call in _option_calls(path):
            checked += 1
            for number in range(call.lineno, call.end_lineno + 1):
                assert len(lines[number - 1]) <= 120, f"{path}:{number} is {len(lines[number - 1])} characters"
    assert checked >= 60
