# dvd-serve: `make serve` runs the embedded default; `make test` runs the test suite.
# Both create .venv and install everything they need first.

PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
TINY := checkpoints/tiny/config.json
PYTEST_ARGS ?=

.PHONY: install serve lint test test-floor test-faults test-slow protos clean aiperf-check

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
	$(MAKE) test-floor

# The oldest transformers pyproject admits (the GPU machine's image has it, KINDS.md): its wheels
# in .transformers-floor, first on PYTHONPATH over the venv's newest release, for the tests whose
# result depends on the release: equality with `generate`, the HF processor and chat template,
# checkpoint loading, and the GPU check's dry run. tests/dvd/test_transformers_range.py keeps
# this, pyproject's lower bound and the release actually imported in step.
TRANSFORMERS_FLOOR := 5.17.0
FLOOR_PINS := transformers==$(TRANSFORMERS_FLOOR) huggingface_hub==1.33.0 tokenizers==0.23.2
FLOOR := .transformers-floor
FLOOR_TESTS := tests/dvd/test_transformers_range.py tests/dvd/test_checkpoint_load.py \
	tests/dvd/test_checkpoint_generation.py tests/dvd/test_checkpoint_flash.py \
	tests/language_service/test_engine_fast_path.py tests/language_service/test_prompt.py \
	tests/language_service/test_prompt_template.py tests/vision_service/test_preprocess.py \
	tests/vision_service/test_tiling_card.py tests/tools/test_make_checkpoint.py tests/tools/test_gpu_check.py \
	"tests/language_service/test_engine_batching.py::test_solo_engine_equals_transformers_generate"

$(FLOOR)/.stamp-$(TRANSFORMERS_FLOOR): $(STAMP)
	rm -rf $(FLOOR)
	$(BIN)/python -m pip install -q --no-deps --target $(FLOOR) $(FLOOR_PINS)
	touch $@

test-floor: $(FLOOR)/.stamp-$(TRANSFORMERS_FLOOR)
	DVD_TRANSFORMERS_FLOOR=$(TRANSFORMERS_FLOOR) PYTHONPATH=$(CURDIR)/$(FLOOR) \
		$(BIN)/python -m pytest -m "not slow" -p no:cacheprovider $(FLOOR_TESTS)

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
	rm -rf $(VENV) .venv-aiperf $(FLOOR) checkpoints .pytest_cache
