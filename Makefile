# `make run` trains the default experiment; `make test` runs the suite. Both build .venv when it
# is missing or pyproject.toml changed since it was built.
PYTHON ?= python3.11
VENV := .venv
STAMP := $(VENV)/.installed
ARGS ?=

.PHONY: run test bench clean-venv

$(STAMP): pyproject.toml
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[dev]'
	$(VENV)/bin/pip check
	@touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/python -m runner $(ARGS)

test: $(STAMP)
	$(VENV)/bin/python -m pytest $(ARGS)

bench: $(STAMP)
	$(VENV)/bin/python benchmarks/speed.py $(ARGS)

clean-venv:
	rm -rf $(VENV)
