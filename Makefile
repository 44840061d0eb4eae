# Every target creates .venv and installs what it needs: on a fresh machine `make demo` and
# `make test` are the only two commands to run.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
# Where Debian's postgresql package puts the server programs, one directory per version
# (set it to a missing directory to exercise the install path of ensure-postgres).
PG_LIB ?= /usr/lib/postgresql
# The browser the dashboard test drives (set it to a missing name to exercise the install path
# of ensure-chromium).
CHROMIUM ?= chromium

.PHONY: install ensure-postgres ensure-chromium test test-fast lint format typecheck doctest bench demo docs soak clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "optuna-cas needs Python >= 3.11 (set PYTHON=...)"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# The tests start a throwaway PostgreSQL cluster of their own (tests/support/postgres.py) and
# need its server programs: Debian's `postgresql` package, whose initdb lives in
# /usr/lib/postgresql/<version>/bin, off PATH. Installed only where missing (needs root, as on
# CI); a no-op where present.
ensure-postgres:
	@if command -v initdb >/dev/null 2>&1 || ls $(PG_LIB)/*/bin/initdb >/dev/null 2>&1; then \
		exit 0; \
	elif [ "$$(id -u)" != 0 ]; then \
		echo "PostgreSQL (initdb) is missing: install the 'postgresql' package as root" >&2; \
		exit 1; \
	else \
		echo "Installing PostgreSQL (Debian package 'postgresql') for the tests"; \
		apt-get update && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql && \
		ls /usr/lib/postgresql/*/bin/initdb; \
	fi

# The dashboard test (tests/test_dashboard_browser.py) drives a real headless browser:
# Debian's `chromium` package. Installed only where missing (needs root, as on CI); a no-op
# where present. The test fails, never skips, without it.
ensure-chromium:
	@if command -v $(CHROMIUM) >/dev/null 2>&1; then \
		exit 0; \
	elif [ "$$(id -u)" != 0 ]; then \
		echo "Chromium is missing: install the 'chromium' package as root" >&2; \
		exit 1; \
	else \
		echo "Installing Chromium (Debian package 'chromium') for the dashboard test"; \
		apt-get update && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium && \
		command -v chromium; \
	fi

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

test: ensure-postgres ensure-chromium lint typecheck doctest
	$(BIN)/pytest $(PYTEST_ARGS)

test-fast: ensure-postgres ensure-chromium $(STAMP)
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
soak: ensure-postgres $(STAMP)
	OPTUNA_CAS_SOAK=1 $(BIN)/pytest -m reliability -q
