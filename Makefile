# One entry point for people and CI. `make demo` and `make test` set everything up first.
# Dependencies are listed once, in pyproject.toml; tools/requirements.py reads them for pip.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
REQS := python3 tools/requirements.py
export VIRTUAL_ENV := $(abspath $(VENV))
# The numpy API's tests run a second time in a venv without torch.
NOTORCH := .venv-notorch

.PHONY: demo test fuzz bench bench-quick setup setup-test setup-lint build lint test-rust \
	test-python test-notorch test-aarch64 clean

$(PY):
	python3 -m venv $(VENV)

# The build tool, the runtime and the demo's optimizer (scipy's L-BFGS).
setup: $(PY)
	$(PIP) install -q $$($(REQS) build runtime demo)

# Everything the tests and the benchmark use; torch comes from PyPI once, then pip's cache.
setup-test: setup
	$(PIP) install -q $$($(REQS) test lint)

setup-lint: $(PY)
	$(PIP) install -q $$($(REQS) lint)

# The extension, optimized, installed into the venv in development mode.
build: $(PY)
	$(VENV)/bin/maturin develop --release --quiet

demo: setup build
	$(PY) -m mlecore demo

lint: setup-lint
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings
	cargo clippy --all-targets --features python -- -D warnings
	$(VENV)/bin/ruff check python tests tools

test-rust:
	cargo test --release --lib

# The property suite runs its fixed "ci" profile here and prints how many cases each ran.
test-python: build
	$(PY) -m pytest -q tests python/mlecore --doctest-modules --hypothesis-show-statistics

# The numpy API without torch installed: the package, the numpy tests and their doctests.
test-notorch: build
	test -x $(NOTORCH)/bin/python || python3 -m venv $(NOTORCH)
	$(NOTORCH)/bin/python -m pip --disable-pip-version-check install -q \
		$$($(REQS) build runtime test-numpy)
	VIRTUAL_ENV=$(abspath $(NOTORCH)) $(NOTORCH)/bin/maturin develop --release --quiet
	! $(NOTORCH)/bin/python -c "import torch" 2>/dev/null
	$(NOTORCH)/bin/python -m pytest -q -m "not torch" tests python/mlecore --doctest-modules \
		--ignore=python/mlecore/torch

# The NEON tier, cross-compiled for aarch64 and run under qemu's user-mode emulation, where
# the aarch64 linker and qemu are installed (.ci/run installs them from Debian's packages);
# the target's standard library comes from rustup.
AARCH64 := aarch64-unknown-linux-gnu
test-aarch64:
	@if command -v qemu-aarch64 >/dev/null && command -v aarch64-linux-gnu-gcc >/dev/null; then \
		set -ex; \
		rustup target list --installed | grep -qx $(AARCH64) || rustup target add $(AARCH64); \
		cargo clippy --release --lib --target $(AARCH64) -- -D warnings; \
		CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
		CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu" \
			cargo test --release --lib --target $(AARCH64); \
	else \
		echo "NOT RUN: the NEON tier's tests need qemu-aarch64 and aarch64-linux-gnu-gcc" \
			"(Debian: qemu-user gcc-aarch64-linux-gnu; .ci/run installs them)"; \
	fi

test: setup-test lint test-rust test-python test-notorch test-aarch64

# The property suite's long profile: thousands of cases per property, new ones each run.
fuzz: setup-test build
	HYPOTHESIS_PROFILE=fuzz $(PY) -m pytest -q tests/test_properties.py \
		--hypothesis-show-statistics

bench: setup-test build
	$(PY) -m mlecore bench --json bench-out/bench.json --plot bench-out/bench.png

bench-quick: setup-test build
	$(PY) -m mlecore bench --quick

clean:
	rm -rf target $(VENV) $(NOTORCH) bench-out
