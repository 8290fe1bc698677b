# Entry points of the harness. `make reproduce` and `make test` each do their own set-up.
PYTHON_BOOTSTRAP ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
SETUP_SENTINEL := $(VENV)/.setup-done
PROFILE ?= cpu

.PHONY: setup data reproduce tables figures test test-quick bench gpu-check clean-runs verify-bench

# Re-running setup with unchanged pins is a no-op: the sentinel is newer than the pin files.
$(SETUP_SENTINEL): requirements/base.txt requirements/no-deps.txt
	@command -v $(PYTHON_BOOTSTRAP) >/dev/null || { echo "error: $(PYTHON_BOOTSTRAP) not found; install Python 3.11 or run make PYTHON_BOOTSTRAP=/path/to/python3.11"; exit 1; }
	test -x $(PY) || $(PYTHON_BOOTSTRAP) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements/base.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -r requirements/no-deps.txt
	$(PY) -c "import harness.bounds.lirpa_compat"
	touch $@

setup: $(SETUP_SENTINEL)

data: setup
	$(PY) -m harness data --dataset mnist --dataset fashion-mnist

# auto: inline on a GPU; on a CPU one worker per core, one torch thread each (the committed results'
# setting: the same numbers whatever the number of cores). WORKERS=N sets the local executor's count.
EXECUTOR ?= auto
WORKERS ?=

reproduce: setup
	$(PY) -m harness reproduce --profile $(PROFILE) --executor $(EXECUTOR) $(if $(WORKERS),--workers $(WORKERS))

tables: setup
	$(PY) -m harness tables

figures: setup
	$(PY) -m harness figures

gpu-check: setup
	$(PY) -m harness gpucheck

bench: setup
	$(PY) -m harness bench bounds
	$(PY) -m harness bench train

test: setup
	$(PY) -m harness data --dataset mnist --dataset fashion-mnist
	$(PY) -m pytest -q --durations=15 tests

# The edit-test loop: the unit tests, without the end-to-end profiles (marked slow) and the SLURM cluster.
test-quick: setup
	$(PY) -m harness data --dataset mnist
	$(PY) -m pytest -q -m "not slow" --ignore=tests/slurm tests

# Removes the git-ignored run folders (checkpoints and records); results/ and plots/ are kept.
clean-runs:
	rm -rf runs

# The whole VNN-COMP 2022 mnist_fc benchmark (90 instances; clone it first, see tests/data/vnncomp/SOURCE.md)
# through `harness verify`, one core per instance, VERIFY_JOBS instances at a time (default: one per
# core), each capped at VERIFY_CAP seconds (the issue's target: 60): results/vnncomp/results.csv (per
# instance), comparison.csv and summary.csv (decided / agree / disagree, ours beside every official
# tool's). Up to 90 x VERIFY_CAP / VERIFY_JOBS seconds.
VNNCOMP_MNIST_FC ?= vnncomp2022_benchmarks/benchmarks/mnist_fc
VERIFY_CAP ?= 60
VERIFY_JOBS ?= $(shell nproc 2>/dev/null || echo 1)

verify-bench: setup
	@test -f $(VNNCOMP_MNIST_FC)/instances.csv || { echo "error: no $(VNNCOMP_MNIST_FC)/instances.csv; git clone https://github.com/ChristopherBrix/vnncomp2022_benchmarks (or set VNNCOMP_MNIST_FC=...)"; exit 1; }
	OMP_NUM_THREADS=1 $(PY) -m harness verify --instances $(VNNCOMP_MNIST_FC)/instances.csv --timeout-cap $(VERIFY_CAP) --jobs $(VERIFY_JOBS) \
		--official tests/data/vnncomp/mnist_fc/official.csv --out results/vnncomp
