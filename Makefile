# Every target creates .venv and installs what it needs: on a fresh machine `make demo` and
# `make test` are the only two commands to run.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install test test-fast lint format typecheck doctest bench demo docs soak clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "optuna-cas needs Python >= 3.11 (set PYTHON=...)"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

format: $(STAMP)
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy src

# Every docstring example runs (those needing a live S3/GCS server are marked +SKIP).
doctest: $(STAMP)
	$(BIN)/pytest -q -p no:randomly --doctest-modules src/optuna_cas -o addopts="" -o testpaths=src

test: lint typecheck doctest
	$(BIN)/pytest $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(BIN)/pytest -m "not slow" $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run

demo: $(STAMP)
	$(BIN)/python -m optuna_cas.demo

clean:
	rm -rf $(VENV) demo-output .pytest_cache .mypy_cache .ruff_cache .hypothesis

# The documentation site; warnings are errors (mkdocs strict mode).
docs: $(STAMP)
	$(BIN)/mkdocs build --strict --site-dir site

# The long reliability run (docs/reliability.md); `make test` runs the short one.
soak: $(STAMP)
	OPTUNA_CAS_SOAK=1 $(BIN)/pytest -m reliability -q
