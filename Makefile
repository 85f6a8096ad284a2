# Entry points for a fresh machine (README.md):
#   make repro      install into .venv, then `dvc repro` the embedded default
#   make test       install into .venv, then the fast tier of the tests (unit tests + one tiny pipeline)
#   make test-all   every tier: fast, slow (more pipelines), bench and container (CI runs this)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ifeq ($(VLM_CONTAINER),1)
# Inside containers/run: the image's environment already holds every dependency.
BIN := /opt/venv/bin
STAMP :=
endif

.PHONY: install lock repro test test-all lint check-params study bench gpu-check clean-venv

# Every dependency comes from requirements.lock: exact versions with their hashes (pip refuses any
# file whose hash differs), for Linux, macOS and Windows, CPU and CUDA alike (on Linux x86-64 the
# PyPI torch wheel is the CUDA build; without a GPU it runs on the CPU). The project itself is
# installed without dependencies, then `pip check` fails if pyproject.toml asks for something the
# lock lacks: run `make lock` after changing a dependency.
LOCK := requirements.lock
$(VENV)/.installed: pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --require-hashes -r $(LOCK)
	$(BIN)/python -m pip install --quiet --no-deps -e .
	$(BIN)/python -m pip check || { echo "pyproject.toml and $(LOCK) disagree: run 'make lock'" >&2; exit 1; }
	touch $(STAMP)

install: $(STAMP)

# Re-resolve requirements.lock from pyproject.toml (newest versions its bounds allow), hashes included. No
# pre-releases: without that flag uv (0.13) resolves gql, of mosaicml-cli, to the beta 3.6.0b4.
lock:
	[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	[ -x $(BIN)/uv ] || $(BIN)/python -m pip install --quiet uv
	$(BIN)/uv pip compile pyproject.toml --extra dev --universal --generate-hashes --prerelease disallow --quiet -o $(LOCK)

repro: install
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dvc repro

# Test tiers are pytest markers (pyproject.toml): `slow` (more pipeline runs), `bench` (the
# performance code at size), `container` (builds the image and runs the pipeline in it). The fast
# tier is everything else. pytest exits 5 when it collected no test: a failure, not a pass.
# `make test-all` is `make test` first, then the other tiers (printing their ten slowest tests).
FAST_TIER := not slow and not bench and not container
PYTEST = PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest -q

test: install
	$(PYTEST) -m "$(FAST_TIER)" $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

# The slow and bench tiers run on TEST_WORKERS pytest-xdist workers (whole files each, so a file's
# module fixtures and order hold): their time goes mostly to starting processes (imports, DVC), one
# core at a time, so a second worker uses the second core of a 2-core machine. TEST_WORKERS=0: one
# process. The container tier runs after them, alone: its image build needs about 15 GB of disk at
# its peak, and beside the other tiers' repositories it once filled the disk. Both parts always run.
TEST_WORKERS ?= 2
test-all: test
	$(PYTEST) --durations=10 $(if $(filter-out 0,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadfile) \
	  -m "(slow or bench) and not container" $(PYTEST_ARGS); first=$$?; \
	$(PYTEST) --durations=10 -m container $(PYTEST_ARGS); rc=$$?; \
	if [ $$first -eq 5 ] || [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; \
	[ $$first -eq 0 ] || exit $$first; exit $$rc

# Check params.yaml (or PARAMS=file) in a second, without running anything.
check-params: install
	$(BIN)/python -m pipeline.check_params $(PARAMS)

# A named study of studies.yaml as DVC experiments, then its report: make study NAME=ratio
study: install
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pipeline.study $(NAME) $(STUDY_ARGS)

# The performance figures with their targets (python -m bench): printed and written to reports/bench.json
bench: install
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m bench $(BENCH_ARGS)

# FSDP at the 1.4b preset on every GPU of this machine, a few minutes (bench/fsdp.py): step time, tokens/s,
# peak memory, a resume from its checkpoint and the gathered weights, in reports/fsdp_check.json
gpu-check: install
	$(BIN)/python -m composer.cli.launcher -n $$($(BIN)/python -c "import torch; print(torch.cuda.device_count())") \
		-m bench.fsdp

lint: install
	$(BIN)/ruff check .

clean-venv:
	rm -rf $(VENV)
