# Everything a person runs. The first target that needs it creates .venv and installs
# the project (editable, with dev tools) into it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HERALD_BOOTSTRAP_API_KEY ?= dev-admin-key
export HERALD_BOOTSTRAP_API_KEY

.PHONY: run test lint format bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

run: $(STAMP)  ## herald dev: API on :8000, workers, relay, DLQ ingester (SQLite by default)
	@echo "Herald dev: http://127.0.0.1:8000/docs   API key: $$HERALD_BOOTSTRAP_API_KEY"
	$(BIN)/herald dev

# Two pytest-xdist workers, one file at a time each (tests/__init__.py gives each worker
# its own vhost, Redis db and PostgreSQL database), files with a minute-long test first
# (tests/conftest.py); then the few tests that count rates or timings (marked `serial`)
# alone, so a second worker's load never bends what they measure. PYTEST_WORKERS=0 runs
# the first part serially too. Exit 5 (nothing selected) is not a failure.
PYTEST_WORKERS ?= 2
test: $(STAMP)  ## the whole suite against the local RabbitMQ, Redis and PostgreSQL
	$(BIN)/pytest -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder -m "not serial" $(PYTEST_ARGS) || [ $$? -eq 5 ]
	$(BIN)/pytest -m serial $(PYTEST_ARGS) || [ $$? -eq 5 ]

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP)  ## benchmarks with their baselines, printed as a table
	$(BIN)/python -m bench.run $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache herald.db herald.db-*
