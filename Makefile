# `make run` trains the default experiment; `make test` runs the suite (`make test-fast`: its in-process
# part). Each builds .venv when it is missing or pyproject.toml changed since it was built.
PYTHON ?= python3.11
VENV := .venv
STAMP := $(VENV)/.installed
ARGS ?=
# test processes (pytest-xdist): one process keeps only about one of two cores busy, the suite waits
# much of its time on subprocesses, SLURM queues and sockets; TEST_WORKERS=1 runs one
TEST_WORKERS ?= 2
PYTEST := $(VENV)/bin/python -m pytest -n $(TEST_WORKERS) --dist loadgroup

.PHONY: run test test-fast bench clean-venv

$(STAMP): pyproject.toml
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[dev]'
	$(VENV)/bin/pip check
	@touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/python -m runner $(ARGS)

# the slowest 20 tests printed last: the ones to shrink when the suite grows
test: $(STAMP)
	$(PYTEST) --durations=20 $(ARGS)

# the in-process part: composed configs, no CLI subprocess, no SLURM (about 2 minutes)
test-fast: $(STAMP)
	$(PYTEST) -m "not e2e and not slurm" $(ARGS)

bench: $(STAMP)
	$(VENV)/bin/python benchmarks/speed.py $(ARGS)

clean-venv:
	rm -rf $(VENV)
