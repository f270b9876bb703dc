# vinejax: `make run` trains the default config end to end on CPU; `make test` runs the suite.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
CONFIG ?= configs/arith_vineppo.py
SFT    ?= configs/arith_sft.py
ARGS   ?=

.PHONY: venv install install-test run compare test test-fast lint bench clean

# `make run` needs only the runtime dependencies; the test extra (torch for the HF parity
# references, pytest, ruff, wandb) is installed on top by `make test`.
$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PY) -m pip install -e '.[test]'
	touch $@

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

# The default run: SFT of a tiny model on the arithmetic task (a no-op once finished), then VinePPO
# (each run draws its own curves.png).
run: install
	$(PY) experiments/run.py --config $(SFT)
	$(PY) experiments/run.py --config $(CONFIG) $(ARGS)

# VinePPO vs PPO, GRPO, RLOO, RestEM, DPO+ (3 seeds, equal gradient steps) and the K ablation on
# the arithmetic task and its harder variant; resumable, finished runs are skipped. Tables and
# plots: runs/compare/results.md. JOBS runs at a time, each pinned to one core with single-threaded
# XLA (JOBS=1: one at a time on every core).
JOBS ?= 2
compare: install
	$(PY) experiments/compare.py --jobs $(JOBS) $(ARGS)

# Two pytest workers (pytest-xdist), one file per worker at a time: most tests compile and run
# tiny programs on one core, so two at once use the machine's two cores.
JOBS_TEST ?= 2
test: install-test
	$(PY) -m pytest -q -n $(JOBS_TEST) --dist loadfile tests $(ARGS)

test-fast: install-test
	$(PY) -m pytest -q -n $(JOBS_TEST) --dist loadfile -m "not slow" tests $(ARGS)

lint: install-test
	$(PY) -m ruff check .

bench: install-test
	for b in benchmarks/*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) runs .pytest_cache
