# vinejax: `make run` trains the default config end to end on CPU; `make test` runs the suite.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
CONFIG ?= configs/arith_vineppo.py
ARGS   ?=

.PHONY: venv install run test test-fast bench clean

$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e '.[test]'
	touch $@

install: $(VENV)/.installed

run: install
	$(PY) experiments/run.py --config $(CONFIG) $(ARGS)

test: install
	$(PY) -m pytest -q tests $(ARGS)

test-fast: install
	$(PY) -m pytest -q -m "not slow" tests $(ARGS)

bench: install
	for b in benchmarks/*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) runs .pytest_cache
