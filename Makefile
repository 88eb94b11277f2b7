# Lodestar: `make run` brings the platform up; `make test` runs the whole suite.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SETUP_STAMP := $(VENV)/.setup-stamp
PROTO_FILES := $(shell find protos -name '*.proto')
GEN_STAMP := gen/.stamp

.PHONY: setup protos run test test-fast lint bench bench-full clean help

help:
	@echo "make run    - start all four services with a demo bank (Ctrl-C stops)"
	@echo "make test   - generate code and run the whole test suite"
	@echo "make lint   - buf lint + buf breaking, ruff, mypy, bandit"
	@echo "make bench  - run the benchmarks at small scale (a few minutes)"
	@echo "make bench-full - run the benchmarks at full scale"

setup: $(SETUP_STAMP) $(GEN_STAMP)

# Re-run when the dependency list changes; idempotent.
$(SETUP_STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	echo "$(CURDIR)/gen" > "$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/lodestar_gen.pth"
	touch $@

protos: $(GEN_STAMP)

$(GEN_STAMP): $(PROTO_FILES) $(SETUP_STAMP)
	rm -rf gen && mkdir -p gen
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) -m grpc_tools.protoc -I protos -I "$$($(PY) -c 'import grpc_tools, os; print(os.path.join(os.path.dirname(grpc_tools.__file__), "_proto"))')" \
		--python_out=gen --grpc_python_out=gen --mypy_out=gen --mypy_grpc_out=gen $(PROTO_FILES)
	touch $@

run: setup
	$(VENV)/bin/lodestar up

test: setup
	$(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/buf lint protos
	@if git rev-parse --verify -q main >/dev/null && git cat-file -e main:protos/buf.yaml 2>/dev/null; then \
		$(VENV)/bin/buf breaking protos --against '.git#branch=main,subdir=protos'; \
	else echo "buf breaking: no protos on main yet, nothing to compare"; fi
	$(VENV)/bin/ruff check services lodestar_cli tests bench
	$(VENV)/bin/mypy services lodestar_cli
	$(VENV)/bin/bandit -q -r services lodestar_cli -c pyproject.toml

bench: setup
	$(PY) -m bench.run_all --scale small

bench-full: setup
	$(PY) -m bench.run_all --scale full

clean:
	rm -rf gen var .pytest_cache

.PHONY: faults fuzz
# Fault scenarios with PASS/FAIL verdicts (bench/faults.py), appended to docs/reliability.md.
faults: setup
	$(PY) -m bench.faults --scale $(or $(SCALE),small) $(if $(SCENARIO),--scenario $(SCENARIO))

# Every RPC under hypothesis with fresh random inputs (the CI run of the same tests is derandomized).
fuzz: setup
	LODESTAR_FUZZ_EXAMPLES=$(or $(EXAMPLES),100) LODESTAR_FUZZ_RANDOM=1 $(PY) -m pytest -q -p no:cacheprovider tests/fuzz/test_rpc_fuzz.py
