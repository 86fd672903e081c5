# Each target builds .venv from nothing when it is missing or older than pyproject.toml.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck bench soak clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -U pip
	$(BIN)/pip install -q --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/sagaray demo

test: $(STAMP)
	./scripts/ensure-postgres.sh
	$(BIN)/ruff check coordinator services tests
	$(BIN)/mypy
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check coordinator services tests

typecheck: $(STAMP)
	$(BIN)/mypy

# Not part of `make test`: mixed load with host kills, host pauses and journal restarts.
MINUTES ?= 5
soak: $(STAMP)
	./scripts/ensure-postgres.sh
	$(BIN)/python -m bench.soak --minutes $(MINUTES)

# Not part of `make test`: throughput, in-flight scale and latency figures (docs/performance.md).
# BENCH_ARGS=--quick for a two-minute smoke run; see `python -m bench.suite --help`.
BENCH_ARGS ?=
bench: $(STAMP)
	./scripts/ensure-postgres.sh
	$(BIN)/python -m bench.suite $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .sagaray .pytest_cache .mypy_cache .hypothesis
