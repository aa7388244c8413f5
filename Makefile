# Two commands on a fresh machine: `make train` and `make test`.
# Each creates .venv from setup.cfg if it is missing or stale, then does its job.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: train test test-fast test-cluster lint docs bench bench-fit bench-optimizers clean

$(STAMP): setup.cfg pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "make: $(PYTHON) not found; run 'make PYTHON=/path/to/python3.11 ...'" >&2; exit 2; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,docs]'
	touch $(STAMP)

train: $(STAMP)
	$(BIN)/python -m launch.train $(ARGS)

# Unit + numerics + single-process tests run on 2 xdist workers; the
# multi-process cluster tests run after, alone, so they get whole cores.
test: $(STAMP)
	$(BIN)/python -m ruff check .
	$(MAKE) docs
	$(BIN)/python -m pytest -q -n 2 -m "not cluster" --durations=15
	$(BIN)/python -m pytest -q -m cluster --durations=10

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 -m "not cluster and not notebook and not slow"

test-cluster: $(STAMP)
	$(BIN)/python -m pytest -q -m cluster

lint: $(STAMP)
	$(BIN)/python -m ruff check .

# The docs site (mkdocs.yml, docs/), built strictly: a broken link or anchor, or
# any warning from the API reference, fails (no --quiet: it hides the warnings
# strict mode counts). The result goes to site/.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/python -m mkdocs build --strict

bench: bench-fit bench-optimizers

bench-fit: $(STAMP)
	$(BIN)/python -m launch.bench_fit $(ARGS)

bench-optimizers: $(STAMP)
	$(BIN)/python -m launch.bench_optimizers $(ARGS)

clean:
	rm -rf $(VENV) build site *.egg-info .pytest_cache .ruff_cache
