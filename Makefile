# One entry point for people and CI. `make demo` and `make test` set everything up first.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
export VIRTUAL_ENV := $(abspath $(VENV))

.PHONY: demo test bench bench-quick setup setup-test build lint test-rust test-python clean

$(PY):
	python3 -m venv $(VENV)

# The runtime and build tools (the demo's optimizer is scipy's L-BFGS).
setup: $(PY)
	$(PIP) install -q "maturin>=1.9.4,<2" "numpy>=1.24" "scipy>=1.11"

# Everything the tests and the benchmark use; torch comes from PyPI once, then pip's cache.
setup-test: setup
	$(PIP) install -q "torch>=2.4" "pytest>=8" "hypothesis>=6" "scikit-learn>=1.3" \
		"ruff>=0.6" tqdm matplotlib

# The extension, optimized, installed into the venv in development mode.
build: $(PY)
	$(VENV)/bin/maturin develop --release --quiet

demo: setup build
	$(PY) -m mlecore demo

lint: setup-test
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings
	cargo clippy --all-targets --features python -- -D warnings
	$(VENV)/bin/ruff check python tests

test-rust:
	cargo test --release --lib

test-python: build
	$(PY) -m pytest -q tests python/mlecore --doctest-modules

test: setup-test lint test-rust test-python

bench: setup-test build
	$(PY) -m mlecore bench --json bench-out/bench.json --plot bench-out/bench.png

bench-quick: setup-test build
	$(PY) -m mlecore bench --quick

clean:
	rm -rf target $(VENV) bench-out
