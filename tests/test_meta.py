"""Meta-tests: every hook is tested and documented, every built-in method is listed with documented
options, every public name is in the plugin-author guide, and the guide quotes the example's real code.

The rules (after datasette's tests/test_plugins.py::test_plugin_hooks_have_tests and
tests/test_docs.py):

- a hook is a function of onnxshrink/plugin/hookspecs.py marked with ``@hookspec``;
- it is *tested* when a test function named ``test_hook_<hook>`` (or ``test_hook_<hook>_<more>``)
  exists in tests/**/test_*.py, this file excluded;
- it is *documented* when a Markdown heading of docs/plugin-authors.md names it as ``<hook>(...)``.
"""

from __future__ import annotations

import ast
import json
import re
import types
from importlib import metadata

import pluggy
import pytest

import onnxshrink
from onnxshrink.plugin import hookspecs
from onnxshrink.plugin.method import check_method_class
from onnxshrink.testing import REFERENCE_GRAPHS, run_method
from onnxshrink.testing.conformance import CHECKS
from tests.support.files import ROOT

GUIDE_PATH = ROOT / "docs" / "plugin-authors.md"
GUIDE = GUIDE_PATH.read_text()
TESTS = ROOT / "tests"
EXAMPLE = ROOT / "examples" / "onnxshrink-fp16-example"
OPTION_TYPES = {"float": (float, int), "int": (int,), "bool": (bool,), "str": (str,), "list": (list,)}


def hook_names(module: types.ModuleType = hookspecs) -> list[str]:
    marker = f"{hookspecs.PROJECT}_spec"
    return sorted(name for name, obj in vars(module).items() if callable(obj) and hasattr(obj, marker))


def collected_test_names(folder=TESTS) -> set[str]:
    """Names of the test functions in ``folder``/**/test_*.py (this file excluded)."""
    names = set()
    for path in sorted(folder.rglob("test_*.py")):
        if path.name == "test_meta.py":
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        names |= {
            node.name
            for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test_")
        }
    return names


def untested(hooks: list[str], tests: set[str]) -> list[str]:
    """Hooks without a ``test_hook_<hook>`` test; a test counts for the longest hook name it spells."""
    covered = set()
    for test in tests:
        matching = [h for h in hooks if test == f"test_hook_{h}" or test.startswith(f"test_hook_{h}_")]
        if matching:
            covered.add(max(matching, key=len))
    return [h for h in hooks if h not in covered]


def undocumented(hooks: list[str], markdown: str) -> list[str]:
    headings = re.findall(r"^#{1,6} .*$", markdown, flags=re.MULTILINE)
    return [h for h in hooks if not any(re.search(rf"`{re.escape(h)}\(", line) for line in headings)]


def test_hookspecs_are_what_pluggy_sees():
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    assert hook_names() == sorted(name for name in vars(pm.hook) if not name.startswith("_"))
    assert hook_names() == ["register_methods"]


@pytest.mark.parametrize("hook", hook_names())
def test_every_hook_has_a_test(hook):
    assert untested([hook], collected_test_names()) == [], f"hook {hook!r} has no test named test_hook_{hook} in tests/"


@pytest.mark.parametrize("hook", hook_names())
def test_every_hook_is_documented(hook):
    assert undocumented([hook], GUIDE) == [], f"hook {hook!r} has no heading `{hook}(...)` in docs/plugin-authors.md"


def test_the_rules_fail_for_a_hook_added_without_test_and_docs(tmp_path):
    fake = types.ModuleType("fake_hookspecs")
    fake.register_methods = hookspecs.register_methods

    @hookspecs.hookspec
    def register_validators(register):
        """A hook that does not exist (yet)."""

    fake.register_validators = register_validators
    assert hook_names(fake) == ["register_methods", "register_validators"]
    assert untested(hook_names(fake), collected_test_names()) == ["register_validators"]
    assert undocumented(hook_names(fake), GUIDE) == ["register_validators"]

    (tmp_path / "test_validators.py").write_text("def test_hook_register_validators_reject_nan():\n    pass\n")
    assert untested(["register_validators"], collected_test_names(tmp_path)) == []
    assert untested(["register", "register_methods"], {"test_hook_register_methods"}) == [
        "register"
    ]  # longest name wins
    assert undocumented(["register_validators"], "## Hooks\n### `register_validators(register)`\n") == []


def builtin_method_names() -> set[str]:
    """Names registered by the onnxshrink distribution's own entry points, found without the CLI."""
    names = set()
    for ep in metadata.distribution("onnxshrink").entry_points.select(group="onnxshrink"):
        ep.load().register_methods(lambda cls: names.add(cls.name))
    return names


def test_every_builtin_method_is_listed_with_documented_options(cli):
    result = cli("plugins", "--json")
    assert result.exit_code == 0, result
    listing = json.loads(result.stdout)
    builtins = {m["name"]: m for m in listing["methods"] if m["builtin"]}
    assert set(builtins) == builtin_method_names() and builtins
    for name, method in builtins.items():
        assert (
            method["kind"] in onnxshrink.KINDS and method["summary"] and method["doc"].startswith(method["summary"])
        ), name
        assert (method["distribution"], method["version"], method["plugin"]) != ("", "", ""), name
        assert method["distribution"] == "onnxshrink" and method["version"] == onnxshrink.__version__, name
        for option in method["options"]:
            where = f"{name}.{option['name']}"
            assert option["doc"].strip(), f"{where} has no doc"
            assert option["type"] in OPTION_TYPES, f"{where} has type {option['type']!r}"
            assert "default" in option, f"{where} has no default"
            default = option["default"]
            if default is not None:
                assert isinstance(default, OPTION_TYPES[option["type"]]), (
                    f"{where} default {default!r} is not a {option['type']}"
                )
                if "choices" in option:
                    assert all(v in option["choices"] for v in (default if isinstance(default, list) else [default])), (
                        where
                    )
    text = cli("plugins")
    assert text.exit_code == 0 and all(f"{name} (" in text.stdout for name in builtins)


@pytest.mark.parametrize("name", onnxshrink.__all__)
def test_every_public_name_is_in_the_guide(name):
    assert re.search(rf"`[^`\n]*(?<!\w){re.escape(name)}(?!\w)[^`\n]*`", GUIDE), (
        f"onnxshrink.{name} is not mentioned (in backticks) in docs/plugin-authors.md"
    )


def test_every_conformance_check_is_in_the_guide():
    for check in CHECKS:
        assert f"`{check}`" in GUIDE, check


def test_every_plugin_environment_variable_is_in_the_guide():
    variables = set(re.findall(r"ONNXSHRINK_[A-Z_]+", (ROOT / "onnxshrink" / "plugin" / "registry.py").read_text()))
    assert variables >= {"ONNXSHRINK_LOAD_PLUGINS", "ONNXSHRINK_BLOCK_PLUGINS", "ONNXSHRINK_TRACE_PLUGINS"}
    for variable in variables:
        assert f"`{variable}" in GUIDE, variable


def fenced_blocks(markdown: str) -> list[tuple[str, str, str]]:
    """(language, code, the comment line just before the fence or "") for every fenced block."""
    pattern = re.compile(
        r"(?:^<!-- (?P<note>[^\n]*) -->\n)?^```(?P<lang>\w*)\n(?P<code>.*?)^```$", re.MULTILINE | re.DOTALL
    )
    return [(m["lang"], m["code"], m["note"] or "") for m in pattern.finditer(markdown)]


def test_guide_excerpts_of_the_example_are_its_real_code():
    excerpts = [
        (note.removeprefix("example: ").strip(), code)
        for _, code, note in fenced_blocks(GUIDE)
        if note.startswith("example: ")
    ]
    assert len(excerpts) >= 6
    for path, code in excerpts:
        source = (EXAMPLE / path).read_text()
        assert code in source, f"docs/plugin-authors.md quotes {path} but the file no longer contains:\n{code}"


def test_guide_python_examples_are_valid_python():
    blocks = [
        code for lang, code, note in fenced_blocks(GUIDE) if lang == "python" and not note.startswith("example: ")
    ]
    assert len(blocks) >= 4
    for code in blocks:
        ast.parse(code)


def test_the_guides_hook_example_registers_a_working_method():
    section = GUIDE.split("### `register_methods(register)`", 1)[1]
    [code] = [c for lang, c, _ in fenced_blocks(section) if lang == "python"][:1]
    namespace: dict = {}
    exec(compile(code, "docs/plugin-authors.md", "exec"), namespace)
    registered = []
    namespace["register_methods"](registered.append)
    [cls] = registered
    assert check_method_class(cls) is None
    model = REFERENCE_GRAPHS["mlp"]()
    model.graph.node[0].doc_string = "exported from model.py:12"
    assert run_method(cls, model).stats == {"cleared": 1}
    assert model.graph.node[0].doc_string == ""
