# Two entry points for a fresh machine (README.md):
#   make repro   install into .venv, then `dvc repro` the embedded default
#   make test    install into .venv, then run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ifeq ($(VLM_CONTAINER),1)
# Inside containers/run: the image's environment already holds every dependency.
BIN := /opt/venv/bin
STAMP :=
endif

.PHONY: install repro test lint check-params study bench clean-venv

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

repro: install
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dvc repro

# pytest exits 5 when it collected no test: that is a failure, not a pass.
test: install
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest -q $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

# Check params.yaml (or PARAMS=file) in a second, without running anything.
check-params: install
	$(BIN)/python -m pipeline.check_params $(PARAMS)

# A named study of studies.yaml as DVC experiments, then its report: make study NAME=ratio
study: install
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pipeline.study $(NAME) $(STUDY_ARGS)

# The performance figures with their targets (python -m bench): printed and written to reports/bench.json
bench: install
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m bench $(BENCH_ARGS)

lint: install
	$(BIN)/ruff check .

clean-venv:
	rm -rf $(VENV)
