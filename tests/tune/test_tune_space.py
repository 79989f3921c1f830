"""tune without running models: the search-space API, space files, the optimizer's determinism,
Pareto fronts, the choice, durations and the recipe writer."""

from __future__ import annotations

import pytest

import onnxshrink
from onnxshrink import Method, Option, Tunable, UsageError
from onnxshrink.plugin.method import PluginSpec, check_method_class
from onnxshrink.plugin.registry import default_registry
from onnxshrink.run.recipe import load_recipe
from onnxshrink.tune import parse_bytes, parse_duration
from onnxshrink.tune import report as rep
from onnxshrink.tune.recipe_export import save_recipe
from onnxshrink.tune.search import WORST, Search
from onnxshrink.tune.space import build_space, default_chains
from onnxshrink.tune.trial import constraint


@pytest.fixture(scope="module")
def registry():
    r = default_registry()
    r.raise_for_errors()
    return r


def _method(space=(), fixed=None):
    class Probe(Method):
        """A probe."""

        name = "probe"
        kind = "quantize"
        options = (
            Option("bits", int, 8, "Bits.", min=2, max=8),
            Option("mode", str, "a", "Mode.", choices=("a", "b")),
            Option("scale", float, 1.0, "Scale.", min=0.0),
        )
        search_space = tuple(space)
        search_fixed = dict(fixed or {})

        def apply(self, model, options, context):
            return {}

    return Probe


def test_tunable_is_public_and_describes_itself():
    assert onnxshrink.Tunable is Tunable
    assert Tunable("bits", choices=(8, 4)).describe() == {"option": "bits", "choices": [8, 4]}
    assert Tunable("scale", low=0.1, high=1.0, log=True).describe() == {
        "option": "scale",
        "low": 0.1,
        "high": 1.0,
        "log": True,
    }


@pytest.mark.parametrize(
    "space, fixed, problem",
    [
        ((Tunable("nope", choices=(1,)),), None, "unknown option 'nope'"),
        ((Tunable("bits", choices=(8, 1)),), None, "between 2 and 8"),
        ((Tunable("mode", choices=("a", "z")),), None, "must be one of a, b"),
        ((Tunable("mode", low=0, high=1),), None, "low <= high on an int or float option"),
        ((Tunable("scale", low=0.0, high=1.0, log=True),), None, "log=True needs low > 0"),
        ((Tunable("bits", choices=(8,)), Tunable("bits", choices=(4,))), None, "twice"),
        ((Tunable("bits", choices=()),), None, "non-empty choices"),
        ((), {"mode": "z"}, "must be one of a, b"),
        ((), {"missing": 1}, "search_fixed names unknown option 'missing'"),
    ],
)
def test_a_bad_search_space_keeps_the_method_from_registering(space, fixed, problem):
    assert problem in check_method_class(_method(space, fixed))


def test_a_good_search_space_passes():
    assert (
        check_method_class(
            _method((Tunable("bits", low=2, high=8), Tunable("mode", choices=("a", "b"))), {"scale": 0.5})
        )
        is None
    )


def test_every_builtin_space_is_valid_and_chains_prune_before_quantize(registry):
    space = build_space(registry)
    assert {"int_quant", "gptq", "weight_prune", "sparse_store"} <= set(space.methods)
    kinds = {name: m.cls.kind for name, m in space.methods.items()}
    lossless = ("int_pack", "short_names")
    assert space.chains[-1] == lossless  # the lossless methods alone
    for chain in space.chains[:-1]:
        assert chain[-2:] == lossless  # lossless: they end every chain
        chain = chain[:-2]
        assert len(chain) in (1, 2)
        if len(chain) == 2:
            assert kinds[chain[0]] == "prune" and kinds[chain[1]] != "prune"
    assert ("weight_prune", "int_quant", *lossless) in space.chains and ("int_quant", *lossless) in space.chains
    # its default (mode=auto) lies outside the space: measured as is, first
    assert space.chains[0] == ("int_quant:default", *lossless)
    assert space.start_points()[0] == {
        "chain": "int_quant:default+int_pack+short_names",
        "int_quant.bits": 8,
        "int_quant.target_cosine": 0.995,
    }
    # the start points are valid option sets for their methods
    for point in space.start_points():
        [plugin, *_] = point["chain"].replace(":default", "").split("+")
        options = {k.split(".", 1)[1]: v for k, v in point.items() if k != "chain"}
        registry.get(plugin).cls.validate_options({**space.methods[plugin].fixed, **options})


def test_plugin_restricts_and_fixes_options(registry):
    space = build_space(
        registry, [PluginSpec("weight_prune", {"structured": "channel"}), PluginSpec("int_quant", {"mode": "storage"})]
    )
    assert space.chains == [("int_quant:default",), ("weight_prune",), ("int_quant",), ("weight_prune", "int_quant")]
    assert space.methods["weight_prune"].fixed["structured"] == "channel"
    assert "structured" not in space.methods["weight_prune"].tunables
    assert space.methods["int_quant"].fixed["mode"] == "storage"
    # mode=storage has no fidelity target: int_quant:default does not search it (every trial would be invalid)
    assert "target_cosine" not in space.methods["int_quant"].tunables
    assert "target_cosine" in build_space(registry, [PluginSpec("int_quant", {})]).methods["int_quant"].tunables
    with pytest.raises(UsageError, match="unknown option 'nope'"):
        build_space(registry, [PluginSpec("int_quant", {"nope": "1"})])
    with pytest.raises(UsageError, match="unknown"):
        build_space(registry, [PluginSpec("no_such_method", {})])


def test_space_file(registry, tmp_path):
    path = tmp_path / "space.toml"
    path.write_text(
        'chains = [["weight_prune", "int_quant"]]\n[int_quant]\nbits = [8, 4]\nmode = '
        '"storage"\n[weight_prune]\nsparsity = { low = 0.3, high = 0.6, step = 0.1 }\n'
    )
    space = build_space(registry, space_file=path)
    assert space.chains == [("weight_prune", "int_quant")]
    assert space.methods["int_quant"].tunables["bits"].choices == (8, 4)
    assert space.methods["int_quant"].fixed == {"mode": "storage"}
    assert space.methods["weight_prune"].tunables["sparsity"].high == 0.6


@pytest.mark.parametrize(
    "text, message",
    [
        ("[nope]\nx = 1\n", "unknown plugin 'nope'"),
        ("[int_quant]\nbits = [8, 3]\n", "must be one of 8, 4, 2"),
        ("[int_quant]\nbits = { low = 2, hi = 8 }\n", "unknown range key 'hi'"),
        ('chains = [["int_quant", "int_quant"]]\n', "names a plugin twice"),
        ('chains = "int_quant"\n', "chains must be a list of lists"),
        ("[int_quant\n", "invalid TOML"),
    ],
)
def test_bad_space_files_name_the_file_and_the_problem(registry, tmp_path, text, message):
    path = tmp_path / "space.toml"
    path.write_text(text)
    with pytest.raises(UsageError, match=message) as err:
        build_space(registry, space_file=path)
    assert "space" in err.value.message


def test_default_chains_only_pair_prune_with_other_kinds(registry):
    space = build_space(registry, [PluginSpec("weight_prune"), PluginSpec("layer_prune"), PluginSpec("gptq")])
    assert default_chains(space.methods) == [
        ("weight_prune",),
        ("layer_prune",),
        ("gptq",),
        ("weight_prune", "gptq"),
        ("layer_prune", "gptq"),
    ]


def _drive(search, n, batch):
    """Ask/tell n trials in batches with results that depend only on the params."""
    seen = []
    while len(seen) < n:
        asked = [search.ask() for _ in range(min(batch, n - len(seen)))]
        for number, chain, params in asked:
            size = (
                0.1 + 0.1 * len(chain) + (0.05 if "int_quant.bits" in params and params["int_quant.bits"] == 4 else 0.0)
            )
            search.tell(
                number, {"status": "ok", "metrics": {"size_ratio": size, "cosine": 0.995}, "constraints": [-0.005]}
            )
            seen.append((number, [(s.plugin, s.options) for s in chain]))
    return seen


@pytest.mark.parametrize("batch", [1, 3])
def test_same_seed_same_trials(registry, batch):
    def run(seed):
        space = build_space(registry)
        search = Search(space, seed, 1)
        for point in space.start_points():
            search.enqueue(point)
        return _drive(search, 24, batch)  # past the start points, into the seeded sampler

    first = run(7)
    assert first == run(7)
    assert first != run(8)
    end = [("int_pack", {}), ("short_names", {})]  # lossless: they end every chain
    assert first[0][1] == [("int_quant", {"bits": 8, "target_cosine": 0.995}), *end]  # int_quant by default
    assert first[1][1] == [("int_quant", {"bits": 4, "target_cosine": 0.995}), *end]  # its default at 4 bits


def test_failed_trials_are_told_as_infeasible(registry):
    search = Search(build_space(registry), 0, 2)
    values, constraints = search.values({"status": "timeout", "metrics": None})
    assert values == WORST and constraints == [1.0, 1.0]


def test_a_default_chain_runs_the_method_with_its_defaults(registry):
    space = build_space(registry, [PluginSpec("int_quant", {"bits": 8})])
    assert space.chain_labels[0] == "int_quant:default"

    class Fixed:
        def suggest_categorical(self, name, choices):
            return "int_quant:default" if name == "chain" else choices[-1]

    # fixed options kept; only what int_quant searches at its defaults (its fidelity target) is searched
    assert space.suggest(Fixed()) == [PluginSpec("int_quant", {"bits": 8, "target_cosine": 0.98})]
    assert space.searched_params("int_quant:default") == {"int_quant.target_cosine"}
    assert space.searched_params("int_quant") == {"int_quant.mode", "int_quant.block_size"}


def test_replay_checks_params_against_the_space(registry):
    space = build_space(registry, [PluginSpec("int_quant")])
    search = Search(space, 0, 1)
    ok = {"status": "ok", "metrics": {"size_ratio": 0.3, "cosine": 0.999}, "constraints": [-0.009]}
    assert search.replay(
        {"chain": "int_quant", "int_quant.mode": "storage", "int_quant.bits": 4, "int_quant.block_size": 32}, ok
    )
    assert not search.replay(
        {"chain": "int_quant", "int_quant.mode": "storage", "int_quant.bits": 3, "int_quant.block_size": 32}, ok
    )
    assert not search.replay({"chain": "gptq", "gptq.bits": 4}, ok)
    assert len(search.study.trials) == 1


def test_constraint_sign():
    check = {"op": ">=", "threshold": 0.99, "value": 0.995, "passed": True}
    assert constraint(check) == pytest.approx(-0.005)
    assert constraint({**check, "value": 0.98, "passed": False}) == pytest.approx(0.01)
    assert constraint({"op": "<=", "threshold": 0.5, "value": 0.7, "passed": False}) == pytest.approx(0.2)
    assert constraint({**check, "value": None, "passed": False}) == 1.0


def _trial(number, size, cosine, *, passed_untimed=True, status="ok"):
    return {
        "number": number,
        "status": status,
        "gates_passed_untimed": passed_untimed,
        "timed": False,
        "passed": False,
        "metrics": {"file_bytes": size, "cosine": cosine, "size_ratio": size / 100, "latency_ratio": None},
    }


def test_fronts_and_choice():
    trials = [
        _trial(0, 50, 0.999),
        _trial(1, 30, 0.995),
        _trial(2, 30, 0.990),
        _trial(3, 20, 0.9, passed_untimed=False),
        _trial(4, 60, 0.999),
    ]
    assert rep.untimed_front(trials) == [0, 1]
    assert rep.to_time(trials, 10) == [1, 0, 2, 4]
    assert rep.to_time(trials, 3) == [1, 0, 2]
    for t, ratio in zip(trials, (0.9, 1.2, 1.0, None, 0.8)):
        if ratio is not None:
            t["timed"], t["metrics"]["latency_ratio"] = True, {"cpu": ratio}
            t["passed"] = ratio <= 1.0
    assert rep.final_front(trials, ["cpu"]) == [0, 1, 2, 4]
    assert rep.choose(trials) == 2  # smallest file that passed every gate
    trials[2]["passed"] = False
    assert rep.choose(trials) == 0
    assert rep.choose([]) is None


@pytest.mark.parametrize("text, seconds", [("90", 90), ("90s", 90), ("10m", 600), ("1h30m", 5400), ("1.5m", 90)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "ten", "10x", "0", "-5m"])
def test_bad_durations(text):
    with pytest.raises(UsageError, match="--time"):
        parse_duration(text)


def test_sizes():
    assert parse_bytes("4G") == 4 * 2**30 and parse_bytes("512m") == 512 * 2**20 and parse_bytes("1000") == 1000
    with pytest.raises(UsageError, match="--trial-memory"):
        parse_bytes("lots")


def test_saved_recipe_loads_back_as_the_same_run(tmp_path):
    (tmp_path / "m.onnx").write_bytes(b"")
    path = tmp_path / "ci" / "best.toml"
    path.parent.mkdir()
    chain = [
        {"plugin": "weight_prune", "options": {"sparsity": 0.55, "structured": "channel"}},
        {"plugin": "int_quant", "options": {"mode": "storage", "bits": 4, "exclude": ["fc"], "block_size": None}},
    ]
    save_recipe(
        path,
        model=tmp_path / "m.onnx",
        output=tmp_path / "out" / "best.onnx",
        seed=3,
        chain=chain,
        data=tmp_path / "eval.npz",
        input_shapes={"input": (1, 8)},
        gates=["cosine>=0.99", "latency_ratio[cpu]<=1.0"],
        trial=5,
    )
    recipe = load_recipe(path)
    assert recipe.model == (tmp_path / "m.onnx").resolve() or recipe.model.resolve() == (tmp_path / "m.onnx").resolve()
    assert recipe.output.resolve() == (tmp_path / "out" / "best.onnx").resolve()
    assert recipe.data_path.resolve() == (tmp_path / "eval.npz").resolve()
    assert recipe.seed == 3 and recipe.input_shapes == {"input": (1, 8)}
    assert [(s.plugin, s.options) for s in recipe.steps] == [
        ("weight_prune", {"sparsity": 0.55, "structured": "channel"}),
        ("int_quant", {"mode": "storage", "bits": 4, "exclude": ["fc"]}),
    ]
    assert recipe.gates == ["cosine>=0.99", "latency_ratio[cpu]<=1.0"]
