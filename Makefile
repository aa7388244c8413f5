# Two commands on a fresh machine: `make train` and `make test`.
# Each creates .venv from setup.cfg if it is missing or stale, then does its job.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: train test test-fast test-cluster lint bench bench-fit bench-optimizers clean fuzz

$(STAMP): setup.cfg pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "make: $(PYTHON) not found; run 'make PYTHON=/path/to/python3.11 ...'" >&2; exit 2; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

train: $(STAMP)
	$(BIN)/python -m launch.train $(ARGS)

# Unit + numerics + single-process tests run on 2 xdist workers; the
# multi-process cluster tests run after, alone, so they get whole cores.
test: $(STAMP)
	$(BIN)/python -m ruff check .
	$(BIN)/python -m pytest -q -n 2 -m "not cluster" --durations=15
	$(BIN)/python -m pytest -q -m cluster --durations=10

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 -m "not cluster and not notebook and not slow"

test-cluster: $(STAMP)
	$(BIN)/python -m pytest -q -m cluster

lint: $(STAMP)
	$(BIN)/python -m ruff check .

bench: bench-fit bench-optimizers

bench-fit: $(STAMP)
	$(BIN)/python -m launch.bench_fit $(ARGS)

bench-optimizers: $(STAMP)
	$(BIN)/python -m launch.bench_optimizers $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache

# The bad-input property test with a long profile (make test runs 2,000 examples
# over both programs; this runs FUZZ_EXAMPLES of each, and every run that reaches
# training takes its 2 steps). Hours on 2 cores at the default.
FUZZ_EXAMPLES ?= 20000
fuzz: $(STAMP)
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) FUZZ_FULL_RUNS=$(FUZZ_EXAMPLES) $(BIN)/python -m pytest -q tests/launch/test_fuzz_inputs.py
