# Two commands do all set-up:  `make run` (the main job) and `make test` (the test suite).
VENV ?= .venv
PYTHON := $(VENV)/bin/python
ARGS ?=
PYTEST_ARGS ?=

.PHONY: setup run test lint serve stack-up stack-down stack-status test-e2e

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[test]'
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
	$(PYTHON) deployments/stack.py up

stack-down:
	$(PYTHON) deployments/stack.py down

stack-status:
	$(PYTHON) deployments/stack.py status

test-e2e: setup
	$(PYTHON) -m pytest -m e2e $(PYTEST_ARGS)
