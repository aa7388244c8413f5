# Two commands on a fresh machine: `make train` and `make test`.
# Each creates .venv from setup.cfg if it is missing or stale, then does its job.

# setup.cfg's classifiers list the same versions (tests/test_python_support.py).
SUPPORTED_PYTHONS := 3.11 3.12 3.13
PYENV_ROOT ?= $(HOME)/.pyenv
# The first supported interpreter that runs: pythonX.Y on PATH, else pyenv's
# install directory. Each candidate is run, because pyenv keeps a shim on PATH
# for every installed version and the shims of unselected versions fail.
# PYTHON=/path/to/python overrides it.
find_python = $(firstword $(foreach v,$(1),$(shell for c in python$(v) \
    $(wildcard $(PYENV_ROOT)/versions/$(v).*/bin/python$(v)); do \
    $$c -c '' >/dev/null 2>&1 && { command -v $$c; break; }; done)))
ifeq ($(origin PYTHON),undefined)
PYTHON := $(call find_python,$(SUPPORTED_PYTHONS))
endif
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
NOX    := $(BIN)/python -m nox --no-color
# The matrix next to the full suite crosses the corners of the support range
# rather than its whole grid: the full suite runs on the default (lowest)
# Python with the newest TensorFlow; `fast_tf_min` runs the fast suite on the
# newest Python with the oldest TensorFlow of setup.cfg's range (nox reads
# both from setup.cfg; no version is written in this file); `colab` runs
# Colab's install path on the newest Python with the newest TensorFlow. The
# middle Python and the fast suite on every Python are `make test-matrix`.
# Then tfopt's tests under KERAS_BACKEND=jax and =torch, in .venv (it holds
# the backends extra; nothing is installed).
CORNERS = fast_tf_min colab
BACKENDS = backend-jax backend-torch

.PHONY: train test test-fast test-cluster test-matrix python lint docs bench bench-fit bench-optimizers \
        device-check set-repo clean fuzz test-upstream

# One line, naming the supported versions, when PYTHON is missing or unsupported.
python_version = $(shell $(1) -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)
check_python = $(if $(filter $(call python_version,$(PYTHON)),$(SUPPORTED_PYTHONS)),,$(error \
    need one of Python $(SUPPORTED_PYTHONS); PYTHON='$(PYTHON)' is missing or unsupported \
    (install one, or run 'make PYTHON=/path/to/python3.X ...')))

python:
	$(check_python)@echo "$(PYTHON)"

$(STAMP): setup.cfg pyproject.toml
	$(check_python)test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,docs,backends,cloud]'
	touch $(STAMP)

train: $(STAMP)
	$(BIN)/python -m launch.train $(ARGS)

# Unit + numerics + single-process tests run on 2 xdist workers. The
# multi-process cluster tests run after them, also on 2 workers but one test
# file per worker (--dist loadfile: a module's cluster fixture runs once): they
# wait on sockets, heartbeats and restarts, and used one core of two when run
# serially (870 CPU-s in 900 s). The equivalence fixture, a third of the
# phase, is marked `longest` and starts first.
CLUSTER_TESTS := -m cluster -n 2 --dist loadfile
# Each phase prints the time it starts, so a log shows where the minutes went.
phase = @date -u +"make test: %T UTC: $(1)"
test: $(STAMP)
	$(call phase,lint and docs)
	$(BIN)/python -m ruff check .
	$(MAKE) --no-print-directory docs
	$(call phase,the suite without the cluster tests)
	$(BIN)/python -m pytest -q -n 2 -m "not cluster" --durations=15
	$(call phase,the cluster tests)
	$(BIN)/python -m pytest -q $(CLUSTER_TESTS) --durations=10
	$(call phase,nox $(CORNERS) $(BACKENDS))
	$(NOX) -s $(CORNERS) $(BACKENDS)
	$(call phase,done)

# `make test-matrix` alone runs the fast suite on every supported Python present.
PYTHONS ?= $(SUPPORTED_PYTHONS)
test-matrix: $(STAMP)
	$(NOX) -s $(foreach v,$(PYTHONS),fast-$(v)) colab fast_tf_min

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 -m "not cluster and not notebook and not slow"

test-cluster: $(STAMP)
	$(BIN)/python -m pytest -q $(CLUSTER_TESTS)

lint: $(STAMP)
	$(BIN)/python -m ruff check .

# The docs site (mkdocs.yml, docs/), built strictly: a broken link or anchor, or
# any warning from the API reference, fails (no --quiet: it hides the warnings
# strict mode counts). The result goes to site/.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/python -m mkdocs build --strict

bench: bench-fit bench-optimizers

bench-fit: $(STAMP)
	$(BIN)/python -m launch.bench.fit $(ARGS)

bench-optimizers: $(STAMP)
	$(BIN)/python -m launch.bench.optimizers $(ARGS)

# The accelerator check (docs/accelerators.md); ARGS="--quick" for the CPU stand-in.
device-check: $(STAMP)
	$(BIN)/python -m launch.device_check $(ARGS)

# A fork points the notebooks' Colab badges and install cells at itself: make set-repo REPO=owner/name
set-repo: $(STAMP)
	$(NOX) -s set_repo -- $(REPO)

clean:
	rm -rf $(VENV) .nox build site *.egg-info .pytest_cache .ruff_cache

# The bad-input property test with a long profile (make test runs 2,000 examples
# over both programs; this runs FUZZ_EXAMPLES of each, and every run that reaches
# training takes its 2 steps). Hours on 2 cores at the default.
FUZZ_EXAMPLES ?= 20000
fuzz: $(STAMP)
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) FUZZ_FULL_RUNS=$(FUZZ_EXAMPLES) $(BIN)/python -m pytest -q tests/launch/test_fuzz_inputs.py

# Early warning from upstream (docs/upstream.md): a throwaway venv with today's
# keras-nightly and tf-nightly runs the reproducer of every workaround in
# strategies/compat (is the upstream bug still there?), then the fast suite,
# and writes both results to docs/upstream.md. Not part of `make test`.
UPSTREAM_VENV := .venv-upstream
test-upstream:
	$(check_python)test -x $(UPSTREAM_VENV)/bin/python || $(PYTHON) -m venv $(UPSTREAM_VENV)
	$(UPSTREAM_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(UPSTREAM_VENV)/bin/python -m pip install --quiet --upgrade --pre tf-nightly keras-nightly
	$(UPSTREAM_VENV)/bin/python -m pip install --quiet --no-deps -e .
	$(UPSTREAM_VENV)/bin/python -m pip install --quiet $$($(UPSTREAM_VENV)/bin/python -m strategies.compat._reproducers --requirements)
	$(UPSTREAM_VENV)/bin/python -m strategies.compat._reproducers --report=docs/upstream.md --suite
