# Aljex sync receiver. The two commands a newcomer needs:
#   make run    start PostgreSQL, the sink (and Envoy) locally on embedded defaults
#   make test   fmt check, clippy, and every test against real PostgreSQL/Envoy/OpenSSH

SHELL := /bin/bash
CARGO ?= cargo

.PHONY: run test deps build lint fmt clean-data

deps:
	scripts/install-deps

build: deps
	$(CARGO) build --release --bins

run: build
	scripts/run

lint: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

test: lint
	$(CARGO) build --workspace --bins
	scripts/with-test-db $(CARGO) test --workspace

fmt:
	$(CARGO) fmt --all

clean-data:
	scripts/pg-cluster stop .data/pg || true
	rm -rf .data
