# funnelcast — `make help` lists every target. Everything installs from the lock file (uv.lock)
# into .venv; uv itself is installed into .tools/ from PyPI, so a fresh machine needs only
# Python 3.11 and make.

.DEFAULT_GOAL := help
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
# the interpreter itself, not a launcher such as pyenv's shim: uv sync compares it with the one
# .venv was made from, and a launcher's path never matches, so .venv was made again every time
PYTHON_EXE = $(shell $(PYTHON) -c 'import sys; print(sys.executable)' 2>/dev/null)
UV_VERSION := 0.13.9
UV := .tools/bin/uv
VENV := .venv
BIN := $(VENV)/bin

export UV_PYTHON_DOWNLOADS := never
export UV_PROJECT_ENVIRONMENT := $(VENV)
export MLFLOW_TRACKING_URI ?= sqlite:///mlruns/mlflow.db
# the suite in two processes, each test file whole in one (its module fixtures made once): half
# the suite's time is one core waiting on subprocesses, servers and Spark; TEST_WORKERS= runs
# it in one
TEST_WORKERS ?= -n 2 --dist loadfile

.PHONY: help install bento-requirements java demo serve test test-fast check lint format typecheck bench bench-models bench-serving clean

help: ## Show this help
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[1m%-12s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

# uv in .tools, made again when UV_VERSION changes (the stamp names the version)
UV_STAMP := .tools/.uv-$(UV_VERSION)

$(UV_STAMP):
	@[ -n "$(PYTHON)" ] && command -v $(PYTHON) >/dev/null || { echo "error: Python 3.11 not found (python3.11 or python3 on PATH); install it or run make PYTHON=/path/to/python3.11"; exit 2; }
	rm -rf .tools
	$(PYTHON) -m venv .tools
	.tools/bin/python -m pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"
	touch $@

# --locked: a uv.lock behind pyproject.toml stops the install (and CI) instead of installing
# without what pyproject added; `uv lock` remakes it. --compile-bytecode: the packages' .pyc
# files are written once, at install (14-21 s on this VM), not compiled again by every
# process that imports them where PYTHONDONTWRITEBYTECODE is set (as on the machines this was
# measured on): a command that loads MLflow and LightGBM spent 5 of its 8.5 s compiling them
install: $(UV_STAMP) ## Install funnelcast and every dependency (all extras) from the lock file
	$(UV) sync --locked --all-extras --compile-bytecode --python $(PYTHON_EXE)

bento-requirements: $(UV_STAMP) ## Remake bento-requirements.txt (the Bento's environment) from uv.lock
	{ echo "# The Bento's Python environment: uv.lock's runtime packages, each pinned (make"; \
	  echo "# bento-requirements; tests/serving/test_packaging.py keeps it equal to uv.lock)."; \
	  $(UV) export --frozen --no-dev --no-hashes --no-emit-project --no-annotate --no-header; \
	} > bento-requirements.txt

java: ## Make sure Java 17 is available for the Spark engine (installs it with apt-get when missing)
	bash scripts/ensure-java.sh

demo: install ## Set everything up and run the main job end to end on built-in simulated data
	$(BIN)/funnelcast run

serve: install ## Serve the champion model on 127.0.0.1:3000 (needs FUNNELCAST_API_KEY)
	$(BIN)/funnelcast serve

test: install java ## Set everything up and run the whole test suite
	$(BIN)/python -m pytest $(TEST_WORKERS)

test-fast: install ## Run the tests that take under a few seconds each
	$(BIN)/python -m pytest -m "not slow"

lint: install ## ruff lint and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install ## Format and auto-fix with ruff
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

typecheck: install ## mypy on the packages
	$(BIN)/mypy

check: lint typecheck test ## ruff, mypy and the tests (CI runs the tests: make test)

bench: install ## Run the benchmarks (figures printed and written to benchmarks/results/)
	$(BIN)/python benchmarks/simulate.py
	$(BIN)/python benchmarks/features.py
	$(BIN)/python benchmarks/training.py
	$(BIN)/python benchmarks/quality.py
	$(BIN)/python benchmarks/reasons.py
	$(BIN)/python benchmarks/serving.py
	$(BIN)/python benchmarks/scoring.py

bench-models: install ## Only the model benchmarks: training speed and quality on every data set
	$(BIN)/python benchmarks/training.py
	$(BIN)/python benchmarks/quality.py

bench-serving: install ## Only the service benchmark: latency, throughput and memory of a real server
	$(BIN)/python benchmarks/serving.py

clean: ## Remove the virtual environments, caches and run outputs in out/ (not mlruns/ or scores/)
	rm -rf $(VENV) .tools .pytest_cache .mypy_cache .ruff_cache .hypothesis out
