# vinejax: `make run` trains the default config end to end on CPU; `make test` runs the suite.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
CONFIG ?= configs/arith_vineppo.py
SFT    ?= configs/arith_sft.py
ARGS   ?=

.PHONY: venv install install-test libtpu run compare compare-rows compare-tune compare-quick test test-fast lint bench clean

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

# The TPU compiler for memory plans of TPU slices on a machine without TPUs
# (`python -m vinejax.tools.plan --target v5e-8`, run with PYTHONPATH=.libtpu): jax[tpu]'s libtpu
# pin, kept out of .venv (installed beside jax, every JAX program would look for a TPU at start-up).
LIBTPU ?= libtpu==0.0.42.*
libtpu: .libtpu/.installed
.libtpu/.installed: $(VENV)/.installed
	$(PY) -m pip install -q --no-deps --target .libtpu '$(LIBTPU)'
	touch $@

# The default run: SFT of a tiny model on the arithmetic task (a no-op once finished), then VinePPO
# (each run draws its own curves.png).
run: install
	$(PY) experiments/run.py --config $(SFT)
	$(PY) experiments/run.py --config $(CONFIG) $(ARGS)

# The comparison of docs/results.md §2 on the harder arithmetic task: VinePPO, PPO, GRPO and RLOO,
# 5 paired seeds on the test split with the learning rates the tuning grid chose
# (docs/compare/tuning.json, every method; `make compare-tune` reruns the grid), one shared SFT
# stage, the shared compilation cache. Resumable; finished runs are skipped. Tables, paired intervals, collapses and
# plots: runs/compare/results.md. JOBS runs at a time, each pinned to one core with single-threaded
# XLA (JOBS=1: one at a time on every core). The extra rows (K ablation, ...): `make compare-rows`.
JOBS ?= 2
COMPARE = $(PY) experiments/compare.py --jobs $(JOBS) --tasks arith_hard
compare: install
	$(COMPARE) --algos vineppo,ppo,grpo,rloo --seeds 0,1,2,3,4 --variants '' --tuning docs/compare/tuning.json $(ARGS)
compare-rows: install
	$(COMPARE) --algos vineppo --seeds 0,1,2,3,4 --variant-seeds 0,1,2 --tuning docs/compare/tuning.json $(ARGS)
compare-tune: install
	$(COMPARE) --algos vineppo,ppo,grpo,rloo --variants '' --tune --tune-lrs 1e-5,3e-5,1e-4,3e-4 --tune-seeds 100 $(ARGS)
# The headline in ~30 CPU minutes: VinePPO against PPO on the 3-step arithmetic task, 3 seeds,
# 48 gradient steps (where the two separate most), 200 evaluation problems, steps to 0.65 accuracy.
compare-quick: install
	$(PY) experiments/compare.py --jobs $(JOBS) --root runs/compare-quick --tasks arith --algos vineppo,ppo \
	    --seeds 0,1,2 --variants '' --iterations 6 --eval-every 3 --eval-problems 200 --threshold 0.65 $(ARGS)

# Two pytest workers (pytest-xdist), one file per worker at a time: most tests compile and run
# tiny programs on one core, so two at once use the machine's two cores. A test that hangs fails
# after setup.cfg's timeout instead of holding the run.
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
	rm -rf $(VENV) .libtpu runs .pytest_cache
