# The README's commands. Each creates .venv if needed and installs edgekit with every
# backend, pinned through constraints.txt (torch stays on its CPU build).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.edgekit-installed
PYTEST_ARGS ?=
BENCH_ARGS ?=

.PHONY: demo test test-slow test-all test-fast lint bench bench-quick install clean

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c constraints.txt -e ".[all,dev]"
	@touch $(STAMP)

install: $(STAMP)

## demo: train the seed CNN on the bundled digits, export for three runtimes, verify, benchmark
demo: $(STAMP)
	$(PY) -m edgekit demo --out build/demo

## bench: the benchmark suite, full matrix (hours on 2 cores); writes benchmarks/results/ and
## the README's performance section. bench-quick: the two-model smoke run, into build/.
bench: $(STAMP)
	$(PY) -m benchmarks.suite --full --readme $(BENCH_ARGS)

bench-quick: $(STAMP)
	$(PY) -m benchmarks.suite --quick --out build/bench-quick

## lint: ruff (style, imports, bug patterns) and mypy (types) over the package, tests, scripts
lint: $(STAMP)
	$(VENV)/bin/ruff check edgekit tests benchmarks scripts
	$(PY) -m mypy

## test: lint, then every test not marked slow (minutes). test-slow: the slow end-to-end
## tests (real clusters, full builds, the CLI in child processes). CI (.ci/run) runs both;
## test-all runs both here.
test: lint
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

test-slow: $(STAMP)
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

test-all: test test-slow

## test-fast: the tests not marked slow, without the lint
test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

clean:
	rm -rf build .pytest_cache
