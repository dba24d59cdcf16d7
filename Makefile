# wss-sessions: `make run` starts the service, `make test` runs the whole suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help install run migrate test test-embedded test-production lint format check migrations-check asyncapi clean bench bench-quick bench-scale bench-delivery

help:  ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

$(STAMP): requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	touch $(STAMP)

install: $(STAMP)  ## Create .venv and install requirements.txt

migrate: $(STAMP)  ## Apply database migrations
	$(BIN)/python manage.py migrate --noinput

run: migrate  ## Start daphne on $(HOST):$(PORT) in debug mode (SQLite, in-memory layer by default)
	DJANGO_DEBUG=$${DJANGO_DEBUG:-true} $(BIN)/daphne -b $(HOST) -p $(PORT) wssproject.asgi:application

test: lint migrations-check test-embedded test-production  ## Run everything: lint, migrations, both test runs

test-embedded: $(STAMP)  ## The suite on the embedded default (SQLite, in-memory layer)
	$(BIN)/python -m pytest -m "not production" --durations=25

# The production path: the same suite on PostgreSQL and channels-redis, plus the tests
# marked `production` (several server processes sharing both), less those marked
# `path_independent` (the browser's pages, start-up checks, pure code), which the embedded
# run has already run. Override the URLs to point elsewhere.
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/test
TEST_REDIS_URL ?= redis://127.0.0.1:6379/0
test-production: $(STAMP)  ## The suite on PostgreSQL + Redis (must be reachable)
	DATABASE_URL=$(TEST_DATABASE_URL) REDIS_URL=$(TEST_REDIS_URL) $(BIN)/python -m pytest -m "not path_independent" --durations=25

lint: $(STAMP)  ## ruff check and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)  ## Apply ruff's formatting and fixes
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

migrations-check: $(STAMP)  ## Fail when a model change has no migration
	$(BIN)/python manage.py makemigrations --check --dry-run

check: test  ## Alias of test

asyncapi: $(STAMP)  ## Regenerate docs/asyncapi.yaml from the declared message types (a test fails when it is stale)
	$(BIN)/python manage.py asyncapi

# The benchmark (bench/, docs/performance.md): the project under daphne and the fast server
# (uvicorn-sansio), at default and bench settings, against the leanest Channels consumer
# (the floor) and Starlette + uvicorn, started and driven in the same run. The project gets
# its own registries: a fresh SQLite file, and BENCH_DATABASE_URL (dropped, re-created).
BENCH_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/wss_bench
BENCH_REDIS_URL ?= redis://127.0.0.1:6379/0
BENCH_ARGS ?=
bench: $(STAMP)  ## Benchmark: churn, steady, hold 8000 and drain on six targets; the targets checked
	$(BIN)/python -m bench --postgres-url $(BENCH_DATABASE_URL) --redis-url $(BENCH_REDIS_URL) $(BENCH_ARGS)

bench-quick: $(STAMP)  ## The same scenarios with tiny counts, in seconds
	$(BIN)/python -m bench --quick --postgres-url $(BENCH_DATABASE_URL) --redis-url $(BENCH_REDIS_URL) $(BENCH_ARGS)

BENCH_SCALE_ARGS ?=
bench-scale: $(STAMP)  ## 50,000 live sessions over 3 servers (PostgreSQL, Redis), then a mass drop
	$(BIN)/python -m bench.scale --postgres-url $(BENCH_DATABASE_URL) --redis-url $(BENCH_REDIS_URL) $(BENCH_SCALE_ARGS)

BENCH_DELIVERY_ARGS ?=
bench-delivery: $(STAMP)  ## Session events: push-to-receive latency, delivery throughput, the window's bytes
	$(BIN)/python -m bench.delivery --postgres-url $(BENCH_DATABASE_URL) --redis-url $(BENCH_REDIS_URL) $(BENCH_DELIVERY_ARGS)

clean:  ## Remove the virtualenv and local state
	rm -rf $(VENV) db.sqlite3* staticfiles .pytest_cache
