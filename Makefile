# One task runner for local work and CI: CI calls only these targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

# uv from PATH, else the copy this Makefile bootstraps with pip (python3 -m uv).
UV := $(shell command -v uv 2>/dev/null || echo "python3 -m uv")
RUN := $(UV) run --frozen

.PHONY: help uv sync run test chaos bench protos check-protos lint fmt clean

help:
	@echo "make run           install everything and serve on 127.0.0.1:50051 (SQLite by default)"
	@echo "make test          install everything and run the whole test suite (SQLite + PostgreSQL)"
	@echo "make chaos         fault suites: kill -9 under load, a private PostgreSQL restarted"
	@echo "make protos        regenerate client/src/parley_client/_gen from protos/"
	@echo "make check-protos  fail if the committed generated code is stale"
	@echo "make lint          ruff, mypy --strict, buf lint, check-protos"
	@echo "make bench         benchmark against this machine's ceilings (PostgreSQL and SQLite)"

# Bootstraps uv with pip when it is missing, so a machine with only Python and make suffices.
uv:
	@command -v uv >/dev/null 2>&1 || python3 -m uv --version >/dev/null 2>&1 || \
		python3 -m pip install --user --quiet uv || \
		python3 -m pip install --user --quiet --break-system-packages uv

sync: uv
	@$(UV) sync --frozen --all-packages --all-groups --quiet

run: sync
	$(RUN) parley serve

test: sync
	$(RUN) pytest -n 2 -m "not chaos" $(PYTEST_ARGS)

# Kills server processes and restarts a private PostgreSQL cluster (made with initdb; as root it
# creates the unprivileged user the cluster runs as).
chaos: sync
	$(RUN) pytest -m chaos -p no:randomly $(PYTEST_ARGS)

bench: sync
	$(RUN) python bench/run.py $(BENCH_ARGS)

protos: sync
	$(RUN) python scripts/gen_protos.py
	$(RUN) python scripts/gen_sync_client.py

check-protos: sync
	$(RUN) python scripts/gen_protos.py --check
	$(RUN) python scripts/gen_sync_client.py --check

# Schema drift (alembic check) is a test: tests/test_migrations.py compares the migrated schema with
# the models on SQLite and PostgreSQL on every run.
lint: sync check-protos
	$(RUN) ruff check .
	$(RUN) ruff format --check .
	$(RUN) mypy client/src server/src examples tests scripts bench
	npm ci --silent --no-audit --no-fund && npx --no-install buf lint

fmt: sync
	$(RUN) ruff check --fix .
	$(RUN) ruff format .

clean:
	rm -rf .venv node_modules .pytest_cache .mypy_cache .ruff_cache
