# Two commands do all set-up:  `make run` (the main job) and `make test` (the test suite).
VENV ?= .venv
PYTHON := $(VENV)/bin/python
ARGS ?=
PYTEST_ARGS ?=

.PHONY: setup run test lint serve stack-up stack-down stack-status test-e2e

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	@echo "Installing the project and its packages into $(VENV) (under a minute with uv; torch comes from this machine's disk)"
	python3 launch/install.py $(VENV) '.[test]'
	$(VENV)/bin/python -c "import torch, prefect, mnist_core"
	touch $@

setup: $(VENV)/.installed

run: setup
	$(PYTHON) flows/mnist.py $(ARGS)

test: setup
	$(PYTHON) -m pytest $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

# The champion's model over HTTP on 127.0.0.1:8000, following every promotion; see docs/serving.md.
serve: setup
	$(PYTHON) -m launch.cli serve $(ARGS)

# The local Prefect stack (server, pool, deployments, worker, model server) on 127.0.0.1; see README.
stack-up: setup
	$(PYTHON) -m launch.stack up

stack-down:
	$(PYTHON) -m launch.stack down

# A stopped stack is an answer, not a failure of make (`mnist stack status` exits 1 for scripts that test it).
stack-status:
	@$(PYTHON) -m launch.stack status || true

test-e2e: setup
	$(PYTHON) -m pytest -m e2e $(PYTEST_ARGS)
