# dvd-serve: `make serve` runs the embedded default; `make test` runs the test suite.
# Both create .venv and install everything they need first.

PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
TINY := checkpoints/tiny/config.json
PYTEST_ARGS ?=

.PHONY: install serve lint test test-faults test-slow protos clean aiperf-check

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel
	# torch first and pinned: a bare `torch` requirement resolves to a multi-GB CUDA build.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

$(TINY): | $(STAMP)
	$(BIN)/dvd make-checkpoint --preset tiny --out checkpoints/tiny

serve: $(STAMP) $(TINY)
	$(BIN)/dvd serve --model checkpoints/tiny

# One-way layers (import-linter contracts in pyproject.toml) and ruff's error and import rules.
lint: $(STAMP)
	$(BIN)/lint-imports
	$(BIN)/ruff check .

# The default suite includes the `faults` suites (rolling restarts, hung replicas, a bounded soak:
# a few minutes on 2 cores); `make test-faults` runs just those.
test: lint
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

test-faults: $(STAMP)
	$(BIN)/python -m pytest -m "faults and not slow" $(PYTEST_ARGS)

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

protos: $(STAMP)
	$(BIN)/python -m grpc_tools.protoc -I . --python_out=. --grpc_python_out=. --pyi_out=. protos/v1/*.proto

# NVIDIA AIPerf's OpenAI chat profile with images against a live tiny stack (AIPerf gets its own
# venv, .venv-aiperf: its pins clash with the server's).
aiperf-check: $(STAMP) $(TINY)
	scripts/aiperf_check.sh

clean:
	rm -rf $(VENV) .venv-aiperf checkpoints .pytest_cache
