"""TOML recipes: a full round trip, every kind of mistake named by its key, command-line overrides."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from onnxshrink.errors import InternalError, UsageError
from onnxshrink.run.recipe import Recipe, RecipeStep, load_recipe, merge_cli
from onnxshrink.validate.gate import parse_gate

FULL = """\
model = "models/cnn.onnx"          # optional; the CLI positional overrides
output = "out/cnn.small.onnx"
seed = 7

[[steps]]
plugin = "weight_prune"
options = { sparsity = 0.5, scope = "global", layers = ["conv1", "fc"], structured = false }

[[steps]]
plugin = "int_quant"
options = { mode = "storage" }

[[steps]]
plugin = "tidy"

[data]
path = "models/cnn_eval.npz"
input_shapes = { input = [1, 1, 8, 8] }

[validate]
enabled = true
providers = ["cpu", "cuda"]
threads = 2
repeats = 30

[gate]
checks = ["size_ratio <= 0.5", "latency_ratio[cpu] <= 1.0", "top1_agreement >= 0.99"]
allow_unavailable = true

[report]
json = "out/report.json"
junit = "out/gate.xml"
markdown = "out/summary.md"
"""


def write(tmp_path: Path, text: str, name: str = "shrink.toml") -> Path:
    folder = tmp_path / "ci"
    folder.mkdir(exist_ok=True)
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def error_for(tmp_path: Path, text: str) -> str:
    path = write(tmp_path, text)
    with pytest.raises(UsageError) as info:
        load_recipe(path)
    message = str(info.value)
    assert str(path) in message, message  # every recipe error names the file
    assert "\n" not in message
    assert info.value.exit_code == 2
    return message


# ------------------------------------------------------------------ valid recipes


def test_full_recipe_round_trip(tmp_path):
    path = write(tmp_path, FULL)
    recipe = load_recipe(path)
    folder = path.parent
    assert recipe.path == path
    assert recipe.model == folder / "models/cnn.onnx"
    assert recipe.output == folder / "out/cnn.small.onnx"
    assert recipe.seed == 7
    assert recipe.steps == [
        RecipeStep(
            "weight_prune", {"sparsity": 0.5, "scope": "global", "layers": ["conv1", "fc"], "structured": False}
        ),
        RecipeStep("int_quant", {"mode": "storage"}),
        RecipeStep("tidy", {}),
    ]
    # option values keep their TOML types (float, str, list, bool)
    assert type(recipe.steps[0].options["sparsity"]) is float and recipe.steps[0].options["structured"] is False
    assert recipe.data_path == folder / "models/cnn_eval.npz"
    assert recipe.input_shapes == {"input": (1, 1, 8, 8)}
    assert recipe.validate is True
    assert recipe.providers == ["cpu", "cuda"]
    assert (recipe.threads, recipe.repeats) == (2, 30)
    assert recipe.gates == ["size_ratio <= 0.5", "latency_ratio[cpu] <= 1.0", "top1_agreement >= 0.99"]
    assert [c.metric for c in recipe.gate_checks] == ["size_ratio", "latency_ratio", "top1_agreement"]
    assert recipe.gate_checks[1].provider == "cpu"
    assert recipe.allow_unavailable is True
    assert recipe.report_json == folder / "out/report.json"
    assert recipe.junit == folder / "out/gate.xml"
    assert recipe.markdown == folder / "out/summary.md"


def test_empty_recipe_has_the_cli_defaults(tmp_path):
    recipe = load_recipe(write(tmp_path, ""))
    defaults = Recipe(path=recipe.path)
    assert recipe == defaults
    assert (recipe.seed, recipe.validate, recipe.providers, recipe.threads, recipe.repeats) == (0, True, ["cpu"], 1, 20)
    assert recipe.model is None and recipe.steps == [] and recipe.gates == [] and recipe.allow_unavailable is False


def test_absolute_paths_stay_absolute(tmp_path):
    target = (tmp_path / "elsewhere" / "m.onnx").resolve()
    recipe = load_recipe(write(tmp_path, f'model = "{target.as_posix()}"\n'))
    assert recipe.model == target


def test_relative_recipe_path_resolves_relative_to_its_folder(tmp_path, monkeypatch):
    write(tmp_path, 'model = "m.onnx"\n[data]\npath = "../data/eval.npz"\n')
    monkeypatch.chdir(tmp_path)
    recipe = load_recipe("ci/shrink.toml")
    assert recipe.model == Path("ci/m.onnx")
    assert recipe.data_path == Path("ci/../data/eval.npz")


def test_validation_can_be_disabled(tmp_path):
    assert load_recipe(write(tmp_path, "[validate]\nenabled = false\n")).validate is False


# ------------------------------------------------------------------ unknown keys


@pytest.mark.parametrize(
    "text,key,known",
    [
        ('modle = "m.onnx"\n', "'modle'", "model"),
        ("[validate]\nthread = 1\n", "'validate.thread'", "threads"),
        ("[gate]\ncheck = []\n", "'gate.check'", "checks"),
        ('[report]\npdf = "x.pdf"\n', "'report.pdf'", "markdown"),
        ('[data]\nlabels = "y.npy"\n', "'data.labels'", "input_shapes"),
        ('[[steps]]\nplugin = "a"\n[[steps]]\nplugn = "b"\n', "'steps[1].plugn'", "plugin"),
        ("[extra]\nx = 1\n", "'extra'", "report"),
    ],
)
def test_unknown_key_is_named_with_its_path(tmp_path, text, key, known):
    message = error_for(tmp_path, text)
    assert f"unknown key {key}" in message
    assert known in message


# ------------------------------------------------------------------ wrong types and values


@pytest.mark.parametrize(
    "text,fragment",
    [
        ('seed = "0"\n', "seed: expected integer, got string"),
        ("seed = 1.5\n", "seed: expected integer, got float"),
        ("model = 3\n", "model: expected string, got integer"),
        ("[validate]\nthreads = true\n", "validate.threads: expected integer, got boolean"),
        ('[validate]\nenabled = "yes"\n', "validate.enabled: expected boolean, got string"),
        ('[validate]\nproviders = "cpu"\n', "validate.providers: expected array, got string"),
        ("[validate]\nproviders = [1]\n", "validate.providers[0]: expected string, got integer"),
        ('[gate]\nchecks = "size_ratio<=0.5"\n', "gate.checks: expected array, got string"),
        ("[gate]\nchecks = [0.5]\n", "gate.checks[0]: expected string, got float"),
        ('[gate]\nallow_unavailable = "no"\n', "gate.allow_unavailable: expected boolean, got string"),
        ("[report]\njson = true\n", "report.json: expected string, got boolean"),
        ('[[steps]]\nplugin = "a"\noptions = "sparsity=0.5"\n', "steps[0].options: expected table, got string"),
        ("[[steps]]\nplugin = 1\n", "steps[0].plugin: expected string, got integer"),
        ('[steps]\nplugin = "a"\n', "steps: expected array, got table"),
        ("steps = [1]\n", "steps[0]: expected table, got integer"),
        ('[data]\ninput_shapes = { input = "1x3" }\n', "data.input_shapes.input: expected array, got string"),
        ('[data]\ninput_shapes = { input = [1, "n"] }\n', "data.input_shapes.input[1]: expected integer, got string"),
        ("[data]\ninput_shapes = { input = [1, 0] }\n", "data.input_shapes.input[1]: must be >= 1"),
        ("data = 3\n", "data: expected table, got integer"),
        ("seed = -1\n", "seed: must be >= 0"),
        ("[validate]\nthreads = 0\n", "validate.threads: must be >= 1"),
        ("[validate]\nrepeats = 0\n", "validate.repeats: must be >= 1"),
        ('[validate]\nproviders = ["cpu", "gpu"]\n', "validate.providers[1]: unknown provider 'gpu'"),
        ('[validate]\nproviders = ["cpu", "cpu"]\n', "validate.providers[1]: provider 'cpu' is listed twice"),
        ("[validate]\nproviders = []\n", "validate.providers: must name at least one provider"),
        ("[[steps]]\noptions = {}\n", "steps[0]: missing required key 'plugin'"),
        ('[[steps]]\nplugin = "  "\n', "steps[0].plugin: must not be empty"),
        ('output = ""\n', "output: must not be empty"),
        ("seed = 2024-01-01\n", "seed: expected integer, got date"),
    ],
)
def test_wrong_type_or_value_names_the_key(tmp_path, text, fragment):
    assert fragment in error_for(tmp_path, text)


def test_steps_as_a_table_hints_at_double_brackets(tmp_path):
    assert "[[steps]]" in error_for(tmp_path, '[steps]\nplugin = "a"\n')


def test_unknown_provider_lists_known(tmp_path):
    message = error_for(tmp_path, '[validate]\nproviders = ["gpu"]\n')
    assert "cpu, cuda, tensorrt" in message


# ------------------------------------------------------------------ gates in a recipe


def test_bad_gate_in_recipe_names_its_index(tmp_path):
    message = error_for(tmp_path, '[gate]\nchecks = ["size_ratio <= 0.5", "sise_ratio <= 0.5"]\n')
    assert "gate.checks[1]" in message
    assert "unknown metric 'sise_ratio'" in message and "size_ratio" in message


def test_bad_provider_in_recipe_gate(tmp_path):
    message = error_for(tmp_path, '[gate]\nchecks = ["latency_ratio[gpu] <= 1"]\n')
    assert "gate.checks[0]" in message and "unknown provider 'gpu'" in message


# ------------------------------------------------------------------ file problems


def test_missing_file_is_named(tmp_path):
    path = tmp_path / "nope.toml"
    with pytest.raises(UsageError) as info:
        load_recipe(path)
    assert "not found" in str(info.value) and str(path) in str(info.value)


def test_directory_is_not_a_recipe(tmp_path):
    with pytest.raises(UsageError, match="is a directory"):
        load_recipe(tmp_path)


def test_invalid_toml_names_file_and_line(tmp_path):
    message = error_for(tmp_path, 'seed = 0\n\nmodel = "unterminated\n')
    assert "invalid TOML" in message and "line 3" in message


def test_duplicate_key_is_invalid_toml(tmp_path):
    assert "invalid TOML" in error_for(tmp_path, "seed = 0\nseed = 1\n")


def test_not_utf8(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_bytes(b'model = "\xff"\n')
    with pytest.raises(UsageError, match="not UTF-8"):
        load_recipe(path)


# ------------------------------------------------------------------ command-line overrides


@dataclasses.dataclass
class FakeSpec:  # the shape of onnxshrink.plugin.method.PluginSpec
    name: str
    options: dict


NO_OVERRIDES = {
    "model": None,
    "steps": [],
    "output": None,
    "seed": None,
    "data": None,
    "input_shapes": None,
    "providers": None,
    "threads": None,
    "repeats": None,
    "validate": None,
    "gates": None,
    "allow_unavailable": None,
    "report_json": None,
    "junit": None,
    "markdown": None,
}


def test_merge_with_nothing_given_keeps_the_recipe(tmp_path):
    recipe = load_recipe(write(tmp_path, FULL))
    assert merge_cli(recipe, NO_OVERRIDES) == recipe
    assert merge_cli(recipe, {"gates": []}) == recipe


def test_cli_values_override_one_by_one(tmp_path):
    recipe = load_recipe(write(tmp_path, FULL))
    before = dataclasses.replace(recipe)
    merged = merge_cli(
        recipe,
        {
            **NO_OVERRIDES,
            "model": "other.onnx",
            "seed": 0,
            "data": Path("eval.npz"),
            "threads": 4,
            "validate": False,
            "allow_unavailable": False,
            "providers": ["cpu"],
            "input_shapes": {"input": [2, 1, 8, 8]},
            "junit": "g.xml",
        },
    )
    assert merged.model == Path("other.onnx")  # CLI paths are taken as given, not resolved against the recipe
    assert merged.seed == 0  # a falsy value that is not None still overrides
    assert merged.data_path == Path("eval.npz")
    assert merged.threads == 4 and merged.repeats == 30
    assert merged.validate is False and merged.allow_unavailable is False
    assert merged.providers == ["cpu"]
    assert merged.input_shapes == {"input": (2, 1, 8, 8)}
    assert merged.junit == Path("g.xml") and merged.markdown == recipe.markdown
    assert merged.steps == recipe.steps and merged.gates == recipe.gates
    assert recipe == before  # the recipe itself is untouched


def test_cli_plugins_replace_the_chain(tmp_path):
    recipe = load_recipe(write(tmp_path, FULL))
    merged = merge_cli(
        recipe, {"steps": [FakeSpec("int_quant", {"bits": "4"}), "tidy", ("weight_prune", {"sparsity": 0.9})]}
    )
    assert merged.steps == [
        RecipeStep("int_quant", {"bits": "4"}),
        RecipeStep("tidy", {}),
        RecipeStep("weight_prune", {"sparsity": 0.9}),
    ]
    assert len(recipe.steps) == 3 and recipe.steps[0].plugin == "weight_prune"


def test_cli_gates_replace_the_recipe_gates(tmp_path):
    recipe = load_recipe(write(tmp_path, FULL))
    merged = merge_cli(recipe, {"gates": ["cosine>=0.999"]})
    assert merged.gates == ["cosine>=0.999"]
    assert [c.expr for c in merged.gate_checks] == ["cosine>=0.999"]
    assert recipe.gates[0] == "size_ratio <= 0.5"


def test_bad_cli_gate_is_a_usage_error(tmp_path):
    recipe = load_recipe(write(tmp_path, FULL))
    with pytest.raises(UsageError, match="unknown metric 'speed'"):
        merge_cli(recipe, {"gates": ["speed >= 2"]})


def test_unknown_override_key_is_a_bug():
    with pytest.raises(InternalError, match="unknown override 'gatez'"):
        merge_cli(Recipe(), {"gatez": ["cosine>=0.9"]})


def test_merge_on_a_default_recipe():
    merged = merge_cli(
        Recipe(), {"model": "m.onnx", "steps": [FakeSpec("weight_prune", {})], "gates": ["size_ratio<=0.5"]}
    )
    assert merged.model == Path("m.onnx") and merged.steps == [RecipeStep("weight_prune", {})]
    assert merged.gate_checks == [parse_gate("size_ratio<=0.5")]


def test_the_shrink_job_is_the_recipe_with_cli_values_on_top(tmp_path):
    """job_from: the recipe file, then command-line values that were given (None = not given)."""
    from onnxshrink.run.shrink import job_from

    path = write(tmp_path, FULL)
    job = job_from(model=None, steps=[], recipe=path, overrides={"threads": None, "seed": 3})
    recipe = load_recipe(path)
    assert job.model == recipe.model and job.output == recipe.output and job.seed == 3
    assert job.steps == recipe.steps
    assert job.data_path == recipe.data_path and job.input_shapes == recipe.input_shapes
    assert (job.providers, job.threads, job.repeats, job.validate) == (["cpu", "cuda"], 2, 30, True)
    assert job.gates == recipe.gates and job.allow_unavailable is True
    assert (job.report_json, job.junit, job.markdown) == (recipe.report_json, recipe.junit, recipe.markdown)
