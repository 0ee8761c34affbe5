# Two commands do all the set-up on a fresh machine:
#   make demo   the main job: SFT warm start (cached), Dr.GRPO training, held-out evaluation, plots
#   make test   the whole test suite
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

.PHONY: setup test demo bench lint clean
setup: $(VENV)/.installed-$(EXTRAS)

$(VENV)/.installed-$(EXTRAS): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]"
	@touch $@

test: setup
	HF_HUB_OFFLINE=1 $(PY) -m pytest

lint: setup
	$(PY) -m ruff check src tests benchmarks
	$(PY) -m ruff format --check src tests benchmarks

demo: setup
	HF_HUB_OFFLINE=1 $(VENV)/bin/drgrpo train

bench:
	$(MAKE) setup EXTRAS=dev,bench
	HF_HUB_OFFLINE=1 $(PY) -m benchmarks.vs_trl

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
