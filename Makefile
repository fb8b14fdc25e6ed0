# Two commands on a fresh machine: `make run` and `make test`. Both create .venv when missing and install.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed
export PATH := $(BIN):$(PATH)
# the pipeline's stages must never resume an MLflow run by accident (see stages/tracking.py)
unexport MLFLOW_RUN_ID

.PHONY: install run test ui clean-outputs

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# dvc repro of the embedded default under one MLflow parent run; prints the score table at the end
run: install
	$(BIN)/python -m pipeline.repro

test: install
	$(BIN)/python -m pytest -q tests

# MLflow UI on the project's store, bound to loopback
ui: install
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlruns.db --host 127.0.0.1 --port 5000
