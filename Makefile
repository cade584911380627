# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# make test also installs the nnunet extra: nnU-Net v2 runs end to end in the suite
NNUNET := $(VENV)/.installed-nnunet

.PHONY: demo test lint docs bench clean gpu-check

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,docs]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/invseg demo

$(NNUNET): $(STAMP)
	$(PY) -m pip install --quiet -e '.[test,docs,nnunet]'
	touch $(NNUNET)

test: $(NNUNET)
	$(PY) -m ruff check .
	$(PY) -m pytest -n 2

docs: $(STAMP)
	$(PY) -m sphinx -W --keep-going -b html docs docs/_build/html

bench: $(STAMP)
	$(VENV)/bin/invseg bench all

# On a GPU machine, with its own interpreter (no venv, no downloads): PYTHON=python3 make gpu-check
gpu-check:
	PYTHONPATH=.$${PYTHONPATH:+:$$PYTHONPATH} $(PYTHON) -m tools.gpucheck

clean:
	rm -rf $(VENV) docs/_build .pytest_cache
