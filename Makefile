# chainlend — `make demo` and `make test` work on a fresh clone (they bootstrap .venv from uv.lock).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
UV := $(PYTHON) -m uv
STAMP := $(VENV)/.synced
export UV_COMPILE_BYTECODE := 1
export UV_LINK_MODE := copy

.PHONY: help venv demo test lint bench airflow mlflow setup clean prod-up prod-down prod-status

help:
	@echo "make demo     simulate 30 business days and run the daily DAGs (report in var/demo/)"
	@echo "make test     lint, import contracts and the whole test suite"
	@echo "make bench    benchmarks; report in var/bench/"
	@echo "make airflow  serve the DAGs in airflow standalone on http://127.0.0.1:8080"
	@echo "make mlflow   the MLflow UI on the embedded registry at http://127.0.0.1:5000"
	@echo "make prod-up  the production profile on this machine (PostgreSQL, MariaDB, Redis, Celery, MLflow server)"
	@echo "make prod-down  stop every process of the production profile by PID"

$(STAMP): uv.lock pyproject.toml
	@$(UV) --version >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet uv
	$(UV) sync --frozen --compile-bytecode --python $(PYTHON)
	@touch $(STAMP)

venv: $(STAMP)

setup: venv
	$(VENV)/bin/chainlend setup

demo: venv
	$(VENV)/bin/chainlend demo

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

test: lint
	$(VENV)/bin/python -m pytest

bench: venv
	$(VENV)/bin/python -m bench

airflow: venv
	$(VENV)/bin/chainlend airflow

mlflow: venv
	$(VENV)/bin/chainlend mlflow-ui

prod-up: venv
	CHAINLEND_PROFILE=prod $(VENV)/bin/chainlend prod up --init

prod-down: venv
	CHAINLEND_PROFILE=prod $(VENV)/bin/chainlend prod down

prod-status: venv
	CHAINLEND_PROFILE=prod $(VENV)/bin/chainlend prod status

clean:
	rm -rf var
