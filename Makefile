# Two commands set everything up: `make demo` and `make test` each create .venv when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: demo test test-unit check format bench clean install browser

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[platform,dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/edgeloop run
	$(BIN)/edgeloop fleet demo

browser:
	sh scripts/ensure-browser

# The suite runs on pytest-xdist workers, a test file to a worker (a file's tests share its fixtures
# and run in order); tests/held.py shares the session servers between the workers. Most of a test's
# time is spent waiting on servers and subprocesses, so there are more workers than cores.
TEST_WORKERS ?= 4

test: $(STAMP) browser
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

test-unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit

check: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/python scripts/check_generated_state.py

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(STAMP)
	$(BIN)/python bench/compression.py
	$(BIN)/python bench/loop_overhead.py

clean:
	rm -rf .edgeloop data/splits model-cards/*/
