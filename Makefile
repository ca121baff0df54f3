# Two commands on a fresh machine:  `make demo`  and  `make test`.
# Each creates .venv and installs rtsflow (with torch + torchvision from the
# registry) on first use; later calls reuse it. Every package is pinned by
# constraints.txt (the versions the suite last passed with; `make lock` renews it), so a
# new upstream release cannot change what CI runs.
PY ?= python3
VENV := .venv
UV_VERSION := 0.13.9
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | cksum | cut -d' ' -f1)

.PHONY: demo default-model test lint bench install lock

$(STAMP): pyproject.toml constraints.txt
	@test -x $(VENV)/bin/python || $(PY) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -qq --upgrade pip uv==$(UV_VERSION)
	@# --compile-bytecode: .pyc files written once here, so no process (CLI call, dask worker) compiles
	@# torch & co. from source at import (~13 s instead of ~5 s where PYTHONDONTWRITEBYTECODE is set).
	$(VENV)/bin/uv pip install --compile-bytecode --python $(VENV)/bin/python -c constraints.txt -e '.[dev]'
	@rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

# Renew the pins to the newest releases pyproject.toml allows; then run `make test` before committing them.
lock:
	@test -x $(VENV)/bin/uv || { $(PY) -m venv $(VENV) && $(VENV)/bin/python -m pip install -qq uv==$(UV_VERSION); }
	$(VENV)/bin/uv pip compile pyproject.toml --extra dev --upgrade --no-header --annotation-style line -o constraints.txt

demo: $(STAMP)
	$(VENV)/bin/rtsflow demo

# Train the default model again (its recipe is in pipelines/demo.py) and ship it in rtsflow/models/default.
default-model: $(STAMP)
	$(VENV)/bin/rtsflow demo --retrain --out .default-model
	cp .default-model/model/model.safetensors .default-model/model/rtsflow_model.json \
	   .default-model/model/training_log.csv rtsflow/models/default/

test: $(STAMP)
	$(VENV)/bin/ruff check rtsflow pipelines tests benchmarks
	@# A one-node SLURM on loopback for the dask-jobqueue test (installs slurm-wlm + munge as root;
	@# where it cannot, the test skips and says why).
	-@bash cluster/slurm/start_local_slurm.sh
	@# Two workers (CI has 2 cores; much of the suite waits on processes, clusters and I/O). Tests are
	@# grouped per module, and all users of the shared demo run together (tests/conftest.py).
	$(VENV)/bin/python -m pytest -q -n 2 --dist loadgroup tests

bench: $(STAMP)
	$(VENV)/bin/python benchmarks/bench_ingest.py
	$(VENV)/bin/python benchmarks/bench_inference.py --batch 2 4
