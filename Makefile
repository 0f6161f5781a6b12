# `make demo` and `make test` each create .venv and install the package when missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test test-fast lint bench clean-results gpu-wheels digits-weights digits-weights-check

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[test,cluster,lint]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/zoo-sweep demo

test: $(STAMP)  # every tier (what CI runs)
	$(BIN)/python -m pytest -q --durations=15

test-fast: $(STAMP)  # the unit tier: no Ray, no subprocess, no server; so two test processes cannot collide
	$(BIN)/python -m pytest -q -n 2 tests/unit

lint: $(STAMP)  # ruff on everything, mypy --strict where pyproject.toml says (CI runs both)
	$(BIN)/ruff check .
	$(BIN)/mypy

bench: $(STAMP)  # every CPU benchmark once, quick settings; BENCHMARKS.md names the exact command of each figure
	$(BIN)/python bench/pairs_at_scale.py --repeat 2
	$(BIN)/python bench/plan_dry_run.py
	$(BIN)/python bench/transfer_step.py
	$(BIN)/python bench/teacher_cache.py --threads 1
	$(BIN)/python bench/scheduler.py
	$(BIN)/python bench/store.py

# the default digits zoo's weights, shipped in the package: rebuild after changing one of its recipes
digits-weights: $(STAMP)
	$(BIN)/python -m zoo_sweep.zoo.build_shipped --workers 2

digits-weights-check: $(STAMP)  # rebuild every shipped model and compare (27 minutes on 2 cores); writes nothing
	$(BIN)/python -m zoo_sweep.zoo.build_shipped --workers 2 --check

# Ray, SQLAlchemy, Alembic and what they need, as CPython 3.12 manylinux wheels at this venv's versions, for a GPU
# node without network (docs/gpus.md, "Offline GPU nodes"): .whl/parts-1 and .whl/parts-2 (the Ray wheel in two
# halves); SLIM=1: Ray without its Java jar, everything in .whl/parts-1
gpu-wheels: $(STAMP)
	$(BIN)/python tools/gpu_wheels.py --versions-from $(BIN)/python --dest .whl $(if $(SLIM),--without-java)

clean-results:
	rm -rf results/cache results/records results/reports results/export results/zoo.db
