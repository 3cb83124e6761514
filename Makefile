# One entry point for people and CI. `make demo` and `make test` set everything up first.
# Dependencies are listed once, in pyproject.toml; tools/requirements.py reads them for pip.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
REQS := python3 tools/requirements.py
export VIRTUAL_ENV := $(abspath $(VENV))
DIST := dist
# A fresh venv that installs the built wheel: no Rust on PATH, no access to python/.
WHEELVENV := $(abspath .venv-wheel)
SUITE := target/installed-suite
X86 := x86_64-unknown-linux-gnu
AARCH64 := aarch64-unknown-linux-gnu
# Where the code must also build: macOS and Windows (the standard libraries come from rustup).
OTHER_TARGETS := aarch64-apple-darwin x86_64-apple-darwin x86_64-pc-windows-msvc
# maturin finds zig (the ziglang package) through the venv's python.
TOOLS := PATH=$(abspath $(VENV))/bin:$$PATH

.PHONY: demo test fuzz bench bench-quick setup setup-test setup-lint setup-wheel build lint stubtest \
	lint-targets test-rust test-python test-aarch64 wheel test-wheel test-sdist \
	test-aarch64-wheel clean

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

setup-wheel: $(PY)
	$(PIP) install -q $$($(REQS) build wheel)

# The extension, optimized, installed into the venv in development mode.
build: $(PY)
	$(VENV)/bin/maturin develop --release --quiet

demo: setup build
	$(PY) -m mlecore demo

lint: setup-lint lint-targets
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings
	cargo clippy --all-targets --features python -- -D warnings
	$(VENV)/bin/ruff check python tests tools
	$(VENV)/bin/actionlint .github/workflows/*.yml

# The hand-written stubs of the compiled module against the module itself (names,
# parameters, defaults): they drifted once.
stubtest: build
	cd python && $(abspath $(PY)) -m mypy.stubtest mlecore._mlecore

# The code builds for macOS and Windows too (Linux-only calls are behind cfg).
lint-targets:
	for t in $(OTHER_TARGETS); do \
		rustup target list --installed | grep -qx $$t || rustup target add $$t || exit 1; \
		PYO3_CROSS_PYTHON_VERSION=3.10 cargo clippy --release --all-targets --features python \
			--target $$t -- -D warnings || exit 1; \
	done

test-rust:
	cargo test --release --lib

# The property suite runs its fixed "ci" profile here and prints how many cases each ran.
test-python: build
	$(PY) -m pytest -q tests python/mlecore --doctest-modules --hypothesis-show-statistics

# manylinux2014 abi3 wheels for x86_64 and aarch64 (cross-compiled, linked by zig) and the
# sdist, into dist/; each wheel checked by auditwheel and for its contents.
wheel: setup-wheel
	rm -rf $(DIST)
	rustup target list --installed | grep -qx $(AARCH64) || rustup target add $(AARCH64)
	for t in $(X86) $(AARCH64); do \
		$(TOOLS) maturin build --release --strip --zig --target $$t \
			--compatibility manylinux2014 --out $(DIST) || exit 1; \
	done
	$(TOOLS) maturin sdist --out $(DIST)
	$(TOOLS) $(PY) tools/check_wheel.py $(DIST)/*.whl

# The x86_64 wheel installed in a fresh venv, with no Rust toolchain on PATH, and the test
# suite run from outside the checkout against it: first the numpy API without torch (the
# numpy tests need no torch), then everything with torch but the tests that start processes
# or clusters (they ran against the development build in test-python).
INSTALLED := env -u VIRTUAL_ENV PATH=$(WHEELVENV)/bin:/usr/local/bin:/usr/bin:/bin
test-wheel: wheel
	rm -rf $(WHEELVENV) $(SUITE) && python3 -m venv $(WHEELVENV)
	$(INSTALLED) python -m pip --disable-pip-version-check install -q \
		$(DIST)/*x86_64.whl $$($(REQS) test-numpy)
	$(INSTALLED) python -m pip --disable-pip-version-check check
	! $(INSTALLED) sh -c "command -v cargo || command -v rustc"
	mkdir -p $(SUITE) && cp -r tests $(SUITE)/
	cd $(SUITE) && ! $(INSTALLED) python -c "import torch" 2>/dev/null
	cd $(SUITE) && $(INSTALLED) python -c "import mlecore; assert 'site-packages' in \
		mlecore.__file__, mlecore.__file__; print('testing', mlecore.__file__)"
	cd $(SUITE) && $(INSTALLED) python -m pytest -q -p no:cacheprovider -m "not torch" tests
	$(INSTALLED) python -m pip --disable-pip-version-check install -q $$($(REQS) test)
	$(INSTALLED) python -m pip --disable-pip-version-check check
	cd $(SUITE) && $(INSTALLED) python -m pytest -q -p no:cacheprovider tests \
		--doctest-modules --pyargs mlecore -m "not processes"

# The sdist builds and installs with pip where Rust is (reusing this checkout's build cache).
test-sdist: wheel
	! tar tzf $(DIST)/*.tar.gz | grep -E "/(\.venv[^/]*|target|dist|bench-out)/"
	rm -rf target/sdist-venv && python3 -m venv target/sdist-venv
	CARGO_TARGET_DIR=$(abspath target) target/sdist-venv/bin/python -m pip \
		--disable-pip-version-check install -q $(DIST)/*.tar.gz
	cd /tmp && $(abspath target/sdist-venv)/bin/python -m mlecore config

# The aarch64 wheel installed and run by Debian's aarch64 Python under qemu-user.
test-aarch64-wheel: wheel
	@if command -v qemu-aarch64 >/dev/null; then \
		tools/aarch64_smoke.sh $(DIST)/*aarch64*.whl "$(PY) -m pip"; \
	else \
		echo "NOT RUN: the aarch64 wheel's smoke test needs qemu-aarch64" \
			"(Debian: qemu-user; .ci/run installs it)"; \
	fi

# The NEON tier, cross-compiled for aarch64 and run under qemu's user-mode emulation, where
# the aarch64 linker and qemu are installed (.ci/run installs them from Debian's packages);
# the target's standard library comes from rustup.
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

test: setup-test lint stubtest test-rust test-python test-aarch64 test-wheel test-sdist \
	test-aarch64-wheel

# The property suite's long profile: thousands of cases per property, new ones each run.
fuzz: setup-test build
	HYPOTHESIS_PROFILE=fuzz $(PY) -m pytest -q tests/test_properties.py \
		--hypothesis-show-statistics

bench: setup-test build
	$(PY) -m mlecore bench --json bench-out/bench.json --plot bench-out/bench.png

bench-quick: setup-test build
	$(PY) -m mlecore bench --quick

clean:
	rm -rf target $(VENV) $(WHEELVENV) $(DIST) bench-out
