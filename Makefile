# xlt: `make demo` runs the main job on the embedded default (SQLite under XLT_HOME);
# `make test` runs the tests on SQLite and PostgreSQL.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export XLT_HOME ?= $(CURDIR)/.xlt

.PHONY: install demo demo-english test lint bench clean

# torch first, from the local CPU wheel: a bare `torch` requirement would pull CUDA packages
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev,ray]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) -m controller.demo

# the first wave's loop on the English base alone (hi, sw, yo on minilm@1)
demo-english: install
	$(PY) -m controller.demo.english

test: install
	$(PY) -m pytest

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

bench: install
	$(PY) bench/registry_bench.py

clean:
	rm -rf $(XLT_HOME)
