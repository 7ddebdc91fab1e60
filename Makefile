# Aljex sync receiver. The two commands a newcomer needs:
#   make run    start PostgreSQL, the sink and Envoy locally on embedded defaults
#   make test   fmt check, clippy, and every test against real PostgreSQL/Envoy/OpenSSH

SHELL := /bin/bash
CARGO ?= cargo
WASM := target/wasm32-wasip1/release/aljex_filter.wasm

.PHONY: run test deps build wasm lint fmt bench-live bench-ingest clean-data

deps:
	scripts/install-deps

wasm: deps
	$(CARGO) build -p aljex-filter --target wasm32-wasip1 --release

build: wasm
	$(CARGO) build --release --bins

run: build
	scripts/run

lint: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy -p aljex-filter --target wasm32-wasip1 -- -D warnings

test: lint wasm
	$(CARGO) build --workspace --bins
	PG_FSYNC=off scripts/with-test-db $(CARGO) test --workspace -- --test-threads=4

bench-live: build
	$(CARGO) build --release -p aljex-tests --bin bench-sql
	# Autovacuum off: an ANALYZE of the 467-column table would land at random on one side.
	PG_SETTINGS="-c autovacuum=off" scripts/with-test-db scripts/bench-live

bench-ingest: build
	scripts/with-test-db scripts/bench-ingest

fmt:
	$(CARGO) fmt --all

clean-data:
	scripts/pg-cluster stop .data/pg || true
	rm -rf .data
