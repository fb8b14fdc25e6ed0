# Two commands on a fresh machine: `make run` and `make test`. Both create .venv when missing and install.
# `make test-fast` (unit tests), `make lint` (ruff), `make docs` (the documentation site into site/).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed
export PATH := $(BIN):$(PATH)
# the pipeline's stages must never resume an MLflow run by accident (see stages/tracking.py)
unexport MLFLOW_RUN_ID

.PHONY: install run test test-fast lint docs ui browser clean-outputs

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test,docs,dev]'
	touch $(STAMP)

install: $(STAMP)

# dvc repro of the embedded default under one MLflow parent run; prints the score table at the end
run: install
	$(BIN)/python -m pipeline.repro

# two workers (pytest-xdist; a module, or the modules sharing the DVC baseline, stay in one worker: tests/conftest.py);
# TEST_WORKERS=0 runs everything in this process
TEST_WORKERS ?= 2
test: install browser
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) tests

# the unit tests alone (the library on known answers): no browser, no DVC/Prefect/MLflow end-to-end runs
test-fast: install
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) tests/unit

# ruff's lint rules and its formatter, both configured in pyproject.toml (the pre-commit hooks run the same)
lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

# the documentation site (mkdocs.yml): every warning is an error; the HTML goes to site/ (not tracked)
docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

# The report is checked in headless Chromium (tests/integration/test_report_browser.py): Debian's chromium and
# chromium-driver, installed when missing (as root, or through sudo).
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then \
	  echo "browser: $$(chromium --version 2>/dev/null | head -1), chromedriver present"; \
	else \
	  echo "browser: installing Debian packages chromium and chromium-driver"; \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium chromium-driver; \
	fi

# MLflow UI: `mlflow server` bound to loopback on the project's SQLite store and artifact folder.
# UI_STORE: another project folder; UI_PORT: another port (tests use both). The server's background job
# consumers (GenAI jobs, which this project does not use) are off: two fewer processes.
UI_STORE ?= $(CURDIR)
UI_PORT ?= 5000
UI_WORKERS ?= 2
ui: install
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(BIN)/mlflow server --backend-store-uri sqlite:///$(abspath $(UI_STORE))/mlruns.db \
	  --artifacts-destination $(abspath $(UI_STORE))/mlartifacts \
	  --host 127.0.0.1 --port $(UI_PORT) --workers $(UI_WORKERS)

# Fashion-MNIST for `prepare.dataset: fashion_mnist`: the Debian package dataset-fashion-mnist puts the
# four IDX .gz files in /usr/share/datasets/fashion-mnist (~30 MB, from the Debian archive; nothing else is fetched).
.PHONY: fashion-mnist
fashion-mnist:
	@if [ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then \
	  echo "fashion-mnist: already installed in /usr/share/datasets/fashion-mnist"; \
	else \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq dataset-fashion-mnist; \
	fi
