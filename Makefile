# The two commands a newcomer types: `make run` and `make test`. Everything else is a step of those.
SHELL := /bin/bash
VENV ?= .venv
BIN := $(abspath $(VENV))/bin
export PATH := $(BIN):$(PATH)
HOST ?= 127.0.0.1
PORT ?= 8000
DEMO_ROWS ?= 3300
DEMO_SEED ?= 0
PYTEST_ARGS ?=

.PHONY: run install db demo-data pipeline demo-token serve test test-slow test-all lint format bench stop-db clean

run: install db demo-data pipeline demo-token serve ## everything: venv, Postgres, demo data, pipeline, server

$(VENV)/.installed: requirements.txt pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $@

install: $(VENV)/.installed

db: install
	potability db migrate

demo-data: db
	potability seed --rows $(DEMO_ROWS) --seed $(DEMO_SEED)

pipeline: demo-data ## decide (dvc repro), then ship the decision (a no-op when it is already the champion)
	dvc repro
	@# --force: the demo's dvc.lock is not committed, so its champion is recorded as not reproducible;
	@# retrains (potability retrain, the Prefect flow) commit theirs on the branch `retrain` and need no force.
	potability deploy --force --reason "make run: demo pipeline (dvc.lock not committed)"
	dvc push -q || echo "dvc push failed: outputs stay in the local cache only"

demo-token: db
	@echo "demo sensor token (shown once):"
	@TOKEN=$$(potability token create --role sensor --name demo-sensor | tail -1 | awk '{print $$NF}'); \
	echo "$$TOKEN"; \
	echo "try: curl -s -H 'Authorization: Bearer $$TOKEN' -H 'Content-Type: application/json' \
	-d '{\"ph\": 7.1, \"Hardness\": 204.9, \"Solids\": 20791, \"Chloramines\": 7.3, \"Sulfate\": 368.5, \"Conductivity\": 564.3, \"Organic_carbon\": 10.4, \"Trihalomethanes\": 86.9, \"Turbidity\": 2.96}' \
	http://$(HOST):$(PORT)/v1/predict"

serve: install
	@echo "serving on http://$(HOST):$(PORT) (quality page at /, API under /v1; Ctrl-C stops)"
	potability serve --host $(HOST) --port $(PORT)

test: install ## every test but the long end-to-end runs (about 5 min on 2 cores); real services all the same
	pytest -m "not slow" $(PYTEST_ARGS)

test-slow: install ## the long end-to-end runs: dvc repro, flow, schedule, lineage, README paths (CI runs them after `make test`)
	pytest -m slow $(PYTEST_ARGS)

test-all: test test-slow ## what CI runs (`.ci/run`)

lint: install
	ruff check src tests bench
	ruff format --check src tests bench

format: install
	ruff format src tests bench
	ruff check --fix src tests bench

bench: install
	python bench/serve.py
	python bench/train.py
	python bench/scale.py
	python bench/write_rollups.py

stop-db: install
	potability db stop

clean:
	rm -rf .pytest_cache .ruff_cache tests/artifacts bench/results
