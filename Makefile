# One entry point for people and CI. `make demo` and `make test` set everything up first.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
export VIRTUAL_ENV := $(abspath $(VENV))

.PHONY: demo test bench bench-quick setup setup-test setup-aarch64 build lint test-rust test-aarch64 test-python clean

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

# The NEON tier, cross-compiled for aarch64 and run under qemu's user-mode emulation: the
# linker, qemu (Debian's packages) and the target's standard library (rustup) are installed
# here when missing.
AARCH64 := aarch64-unknown-linux-gnu
setup-aarch64:
	command -v qemu-aarch64 >/dev/null && command -v aarch64-linux-gnu-gcc >/dev/null || \
		{ apt-get install -y -q qemu-user gcc-aarch64-linux-gnu || \
		  { apt-get update -q && apt-get install -y -q qemu-user gcc-aarch64-linux-gnu; }; }
	rustup target list --installed | grep -qx $(AARCH64) || rustup target add $(AARCH64)

test-aarch64: setup-aarch64
	cargo clippy --release --lib --target $(AARCH64) -- -D warnings
	CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
	CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu" \
		cargo test --release --lib --target $(AARCH64)

test-python: build
	$(PY) -m pytest -q tests python/mlecore --doctest-modules

test: setup-test lint test-rust test-python test-aarch64

bench: setup-test build
	$(PY) -m mlecore bench --json bench-out/bench.json --plot bench-out/bench.png

bench-quick: setup-test build
	$(PY) -m mlecore bench --quick

clean:
	rm -rf target $(VENV) bench-out
