"""Plugin discovery through real entry points (a distribution faked on sys.path, as pytest's tests do)."""

from __future__ import annotations

import json

import pytest

from onnxshrink.errors import ExitCode, PluginError, UsageError
from onnxshrink.plugin.registry import load_registry
from tests.support.plugins import make_distribution

GOOD_PLUGIN = '''
import onnxshrink

class Hello(onnxshrink.Method):
    """Do nothing, politely (a test plugin)."""
    name = "{method}"
    kind = "transform"
    options = (onnxshrink.Option("greeting", str, "hi", "What to say."),)

    def apply(self, model, options, context):
        return {{"said": options["greeting"]}}

@onnxshrink.hookimpl
def register_methods(register):
    register(Hello)
'''


@pytest.fixture
def site(tmp_path, monkeypatch):
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.delenv("ONNXSHRINK_LOAD_PLUGINS", raising=False)
    monkeypatch.delenv("ONNXSHRINK_BLOCK_PLUGINS", raising=False)
    return root


def test_builtins_register_through_entry_points(site):
    registry = load_registry()
    info = registry.get("weight_prune")
    assert info.distribution == "onnxshrink" and info.builtin
    assert registry.errors == []


def test_third_party_plugin_is_discovered(site):
    make_distribution(site, "onnxshrink-hello", "hello_plugin", GOOD_PLUGIN.format(method="hello"))
    registry = load_registry()
    info = registry.get("hello")
    assert (info.plugin, info.distribution, info.version, info.builtin) == (
        "hello_plugin",
        "onnxshrink-hello",
        "1.2.3",
        False,
    )


def test_allow_list_and_block_list(site, monkeypatch):
    make_distribution(site, "onnxshrink-hello", "hello_plugin", GOOD_PLUGIN.format(method="hello"))
    monkeypatch.setenv("ONNXSHRINK_LOAD_PLUGINS", "")
    registry = load_registry()
    assert "hello" not in registry.methods and "weight_prune" in registry.methods  # built-ins always load
    assert "hello_plugin" in registry.skipped
    monkeypatch.setenv("ONNXSHRINK_LOAD_PLUGINS", "onnxshrink-hello")
    assert "hello" in load_registry().methods
    monkeypatch.delenv("ONNXSHRINK_LOAD_PLUGINS")
    monkeypatch.setenv("ONNXSHRINK_BLOCK_PLUGINS", "hello_plugin,weight_prune")
    registry = load_registry()
    assert "hello" not in registry.methods and "weight_prune" not in registry.methods


def test_duplicate_method_name_names_both_plugins(site):
    make_distribution(site, "onnxshrink-copycat", "copycat_plugin", GOOD_PLUGIN.format(method="weight_prune"))
    registry = load_registry()
    assert registry.get("weight_prune").distribution == "onnxshrink"
    with pytest.raises(PluginError) as info:
        registry.raise_for_errors()
    message = str(info.value)
    assert "copycat_plugin" in message and "onnxshrink-copycat" in message and "'weight_prune'" in message
    assert info.value.exit_code is ExitCode.FAILURE


def test_import_error_names_plugin_and_distribution(site):
    make_distribution(site, "onnxshrink-broken", "broken_plugin", "import does_not_exist_anywhere\n")
    registry = load_registry()
    [error] = registry.errors
    assert error.plugin == "broken_plugin" and error.distribution == "onnxshrink-broken"
    assert "ModuleNotFoundError" in error.message


def test_misspelled_hook_fails_at_once(site):
    source = GOOD_PLUGIN.format(method="hello").replace("def register_methods", "def register_method")
    make_distribution(site, "onnxshrink-typo", "typo_plugin", source)
    [error] = load_registry().errors
    assert error.plugin == "typo_plugin" and "register_method" in error.message


def test_invalid_method_class_is_reported(site):
    source = GOOD_PLUGIN.format(method="Bad Name")
    make_distribution(site, "onnxshrink-bad", "bad_plugin", source)
    [error] = load_registry().errors
    assert "must match" in error.message


def test_unknown_plugin_lists_known_ones(site):
    with pytest.raises(UsageError, match="known plugins: .*weight_prune"):
        load_registry().get("no_such_method")


def test_cli_lists_third_party_plugin_and_broken_ones(site, cli_subprocess):
    make_distribution(site, "onnxshrink-hello", "hello_plugin", GOOD_PLUGIN.format(method="hello"))
    make_distribution(site, "onnxshrink-broken", "broken_plugin", "raise RuntimeError('kaput')\n")
    result = cli_subprocess("plugins", "--json", env={"PYTHONPATH": str(site)})
    assert result.exit_code == 0, result
    listing = json.loads(result.stdout)
    by_name = {m["name"]: m for m in listing["methods"]}
    assert by_name["hello"]["distribution"] == "onnxshrink-hello" and by_name["hello"]["version"] == "1.2.3"
    assert by_name["hello"]["options"] == [{"name": "greeting", "type": "str", "default": "hi", "doc": "What to say."}]
    assert [e["plugin"] for e in listing["errors"]] == ["broken_plugin"]
    assert "kaput" in listing["errors"][0]["error"]


def test_trace_prints_hook_calls(site, cli_subprocess):
    make_distribution(site, "onnxshrink-hello", "hello_plugin", GOOD_PLUGIN.format(method="hello"))
    result = cli_subprocess("plugins", env={"PYTHONPATH": str(site), "ONNXSHRINK_TRACE_PLUGINS": "1"})
    assert result.exit_code == 0, result
    assert "register_methods -> hello_plugin" in result.stderr
    assert "register_methods -> weight_prune" in result.stderr
