# Two set-up commands: `make demo` and `make test`. Both create/reuse .venv and install what they need.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
EXTRAS ?= server,llamaindex,lightrag,milvus,demo,notebooks,test
STAMP := $(VENV)/.rag-plugins-$(shell echo '$(EXTRAS)' | tr ',' '-')
PYTEST_ARGS ?=

.PHONY: demo test lint typecheck install clean bench-beir

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# torch first: CUDA build where a GPU driver is present, else the CPU build pinned by CI (torch==2.13.0).
$(STAMP): pyproject.toml Makefile | $(PY)
	@if ! $(PY) -c "import torch" 2>/dev/null; then \
	  if command -v nvidia-smi >/dev/null 2>&1; then $(PY) -m pip install torch; \
	  else $(PY) -m pip install torch==2.13.0; fi; \
	fi
	$(PY) -m pip install -e ".[$(EXTRAS)]"
	@# RAG-Anything pins lightrag-hku<1.5 and mineru[core] (CUDA torch); content-list insertion needs neither.
	$(PY) -m pip install --no-deps raganything==1.4.3
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m demo.run

lint: $(STAMP)
	$(VENV)/bin/ruff check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(PY) -m pytest $(PYTEST_ARGS)

bench-beir: $(STAMP)
	$(PY) -m bench.beir_eval --data ../shared/data/scifact

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
