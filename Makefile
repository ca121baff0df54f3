# Two commands on a fresh machine:  `make demo`  and  `make test`.
# Each creates .venv and installs rtsflow (with torch + torchvision from the
# registry) on first use; later calls reuse it.
PY ?= python3
VENV := .venv
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: demo default-model test lint bench install

$(STAMP): pyproject.toml
	@test -x $(VENV)/bin/python || $(PY) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -qq --upgrade pip uv
	@# --compile-bytecode: .pyc files written once here, so no process (CLI call, dask worker) compiles
	@# torch & co. from source at import (~13 s instead of ~5 s where PYTHONDONTWRITEBYTECODE is set).
	$(VENV)/bin/uv pip install --compile-bytecode --python $(VENV)/bin/python -e '.[dev]'
	@rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

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
