# PrivateTune — the commands a newcomer needs. Everything lives under PFT_HOME (default .local/).
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export PFT_HOME ?= $(CURDIR)/.local
export AIRFLOW_HOME := $(PFT_HOME)/airflow
export AIRFLOW__CORE__DAGS_FOLDER := $(CURDIR)/dags
export AIRFLOW__CORE__PLUGINS_FOLDER := $(CURDIR)/plugins
export AIRFLOW__CORE__LOAD_EXAMPLES := False
export AIRFLOW__CORE__EXECUTOR := LocalExecutor
export AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION := True
export AIRFLOW__LOGGING__COLORED_CONSOLE_LOG := False
# Offline and telemetry off (the same list as tasks/common/offline.py, for processes that never import it).
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_HUB_DISABLE_TELEMETRY := 1
export DVC_NO_ANALYTICS := 1
export MLFLOW_DISABLE_TELEMETRY := true
export GX_ANALYTICS_ENABLED := False
export AIRFLOW__USAGE_DATA_COLLECTION__ENABLED := False
export SCARF_ANALYTICS := false
export DO_NOT_TRACK := true
export TOKENIZERS_PARALLELISM := false

# The pseudonymisation key: only the masking tasks read it (config mask.key_file), never the environment.
KEY_FILE := $(PFT_HOME)/secrets/pseudonym.key
# The demo's deployment config (include/config/demo.yaml: pipeline.yaml, promoted by the gates alone).
DEMO_CONFIG = PFT_CONFIG="$${PFT_CONFIG:-$(CURDIR)/include/config/demo.yaml}"

.PHONY: help setup demo verify-offline test test-fast lint lock airflow data base-model report bench-mask bench-train bench-privacy bench-utility bench-cluster clean-runs clean serve rollback cluster cluster-down cluster-status

help:
	@echo "make demo      install, prepare .local/, run the privacy_finetune DAG end to end, print the summary"
	@echo "make test      install and run the whole test suite (unit tier plus e2e, live Airflow, browser, torchrun)"
	@echo "make test-fast the unit tests only (-m 'not slow'), for iteration"
	@echo "make lint      ruff check, ruff format --check and the import-layer contracts (lint-imports)"
	@echo "make lock      re-resolve requirements.lock (every transitive pin, with hashes) after editing requirements*.txt"
	@echo "make verify-offline  the demo run inside a network namespace with only loopback"
	@echo "make cluster   the production topology natively: Postgres, Redis, S3, MLflow server, Celery workers"
	@echo "make cluster-down / cluster-status  stop it / check every service's health"
	@echo "make airflow   start Airflow (web UI on http://localhost:8080) on the same PFT_HOME"
	@echo "make report    print the summary of the latest run"
	@echo "make serve     serve the champion model on http://$(SERVE_HOST):$(SERVE_PORT) (needs PFT_SERVE_TOKEN)"
	@echo "make rollback  move the champion back to the previous champion (TO_VERSION=N for a given one)"
	@echo "make bench-mask  masking recall per entity and throughput (results in bench/results/)"
	@echo "make bench-train PEFT vs full fine-tuning, DP overhead, privacy-utility (~30 min; results in bench/results/)"
	@echo "make bench-privacy canary exposure and MIA AUC, DP vs non-private and memorising controls, per record and per subject (~45 min; bench/results/)"
	@echo "make bench-cluster masking on 1 vs 2 Celery workers of make cluster, one month of 8,000 records (~15 min)"
	@echo "make bench-utility test EM with CIs vs ε and records: how much data ε = X needs (~60 min; bench/results/)"

# Dependencies: requirements.txt (direct pins), requirements-models.txt (the spaCy pipeline, by hash) and
# requirements-dev.txt (lint, lock and build tools) are the human-edited inputs; requirements.lock is every
# transitive pin with its hashes, resolved from them by `make lock` for Python 3.11 on Linux x86_64.
# Every install is hash-checked: first pip and the build backends (their lines cut from the lock), then
# the lock without build isolation, so the few sdists build with those hashed backends. torch is the
# CPU build (2.13.0+cpu) from pip's find-links (/opt/wheels on these machines): its hash is that wheel's.
LOCK := requirements.lock
LOCK_INPUTS := requirements.txt requirements-models.txt requirements-dev.txt
BOOTSTRAP := pip setuptools wheel poetry-core
# The lock's entries (pin, hashes, comments) for the packages named in $(1).
lock_entries = awk -v names="$(1)" 'BEGIN {split(names, n, " "); for (i in n) want[n[i]] = 1} \
	/^[A-Za-z0-9]/ {split($$1, f, "=="); keep = (f[1] in want)} keep' $(LOCK)
# Fails when a direct pin of the inputs is not the version in the lock (an input edited without `make lock`).
LOCK_FRESH = $(PYTHON) -c 'import re, sys; norm = lambda name: re.sub(r"[-_.]+", "-", name).lower(); \
	pin = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^]]*\])?==([^\s;\\]+)"); \
	lock = {norm(m[1]): m[2].split("+")[0] for m in map(pin.match, open("$(LOCK)")) if m}; \
	stale = [f"{m[1]}=={m[2]} (lock: {lock.get(norm(m[1]))})" for f in sys.argv[1:] for m in map(pin.match, open(f)) \
	         if m and lock.get(norm(m[1])) != m[2].split("+")[0]]; \
	stale and sys.exit("$(LOCK) is out of date, run make lock: " + ", ".join(stale))' $(LOCK_INPUTS)

$(STAMP): $(LOCK) $(LOCK_INPUTS) pyproject.toml
	@$(LOCK_FRESH)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(call lock_entries,$(BOOTSTRAP)) > $(VENV)/bootstrap.lock
	$(BIN)/python -m pip install --quiet --require-hashes --no-deps -r $(VENV)/bootstrap.lock
	$(BIN)/python -m pip install --quiet --require-hashes --no-build-isolation -r $(LOCK)
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

# Re-resolve the lock from the inputs with pip's own index config (PyPI, the local mirrors, find-links).
# Pins already in the lock are kept where they still fit; `make lock UPGRADE=1` re-resolves everything.
lock:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	test -x $(BIN)/pip-compile || $(BIN)/python -m pip install --quiet -r requirements-dev.txt
	CUSTOM_COMPILE_COMMAND="make lock" $(BIN)/pip-compile --quiet --generate-hashes --allow-unsafe --strip-extras --no-emit-index-url --no-emit-find-links \
		$(if $(UPGRADE),--upgrade) --output-file $(LOCK) $(LOCK_INPUTS)
	@$(LOCK_FRESH)
	@echo "$(LOCK): $$(grep -c '^[A-Za-z0-9]' $(LOCK)) pinned distributions; make setup installs them"

# The embedded default: folders, a random pseudonymisation key (kept out of code and git), Airflow's SQLite DB.
setup: $(STAMP)
	@mkdir -p $(PFT_HOME)/landing $(AIRFLOW_HOME) && mkdir -p -m 700 $(PFT_HOME)/secrets && chmod 700 $(PFT_HOME)/secrets $(PFT_HOME)/landing
	@test -s $(KEY_FILE) || (umask 077; $(BIN)/python -c "import secrets; print(secrets.token_hex(32))" > $(KEY_FILE))
	@chmod 600 $(KEY_FILE)
	@test -f $(AIRFLOW_HOME)/.db-ready || ($(BIN)/airflow db migrate > $(AIRFLOW_HOME)/db-migrate.log 2>&1 && touch $(AIRFLOW_HOME)/.db-ready) \
		|| (tail -20 $(AIRFLOW_HOME)/db-migrate.log; exit 1)
	@test -f $(AIRFLOW_HOME)/.pool-ready || ($(BIN)/airflow pools set gpu 1 "training slots: one per GPU worker" > /dev/null \
		&& touch $(AIRFLOW_HOME)/.pool-ready)

# Sample domain data (landing files, held-out QA, general corpus) unless landing files already exist.
data: setup
	@if [ -z "$$(find $(PFT_HOME)/landing -type f \( -name '*.jsonl' -o -name '*.csv' \) 2>/dev/null | head -1)" ]; then \
		$(BIN)/python -m tasks.demo.synth --home $(PFT_HOME); else echo "landing data present: $(PFT_HOME)/landing"; fi

base-model: data
	$(BIN)/python -m tasks.demo.base_model --corpus $(PFT_HOME)/synth/general_corpus.txt --models-root $(PFT_HOME)/models --size demo

demo: base-model
	@$(DEMO_CONFIG) $(BIN)/airflow dags test privacy_finetune > $(PFT_HOME)/last-demo.log 2>&1 \
		|| (tail -40 $(PFT_HOME)/last-demo.log; echo "demo failed: full log in $(PFT_HOME)/last-demo.log"; exit 1)
	@$(BIN)/python -m tasks.release.report

# The same run inside a network namespace that has only loopback (util-linux unshare, iproute2):
# proof that no step of the pipeline needs the network. Installing happens before, outside it.
UNSHARE := $(if $(filter 0,$(shell id -u)),unshare -n,unshare -rn)
verify-offline: base-model
	@command -v unshare > /dev/null && command -v ip > /dev/null || (echo "verify-offline needs unshare (util-linux) and ip (iproute2)"; exit 1)
	@$(UNSHARE) bash -c 'ip link set lo up && ! ip route get 1.1.1.1 > /dev/null 2>&1 && echo "network namespace: loopback only" \
		&& $(DEMO_CONFIG) $(BIN)/airflow dags test privacy_finetune' > $(PFT_HOME)/last-verify-offline.log 2>&1 \
		|| (tail -40 $(PFT_HOME)/last-verify-offline.log; echo "verify-offline FAILED: full log in $(PFT_HOME)/last-verify-offline.log"; exit 1)
	@$(BIN)/python -m tasks.release.report
	@echo "verify-offline: privacy_finetune ran end to end with only loopback (log: $(PFT_HOME)/last-verify-offline.log)"

report: $(STAMP)
	@$(BIN)/python -m tasks.release.report

# Serving and release. MODEL_NAME: the registered model (registry.model_name in the pipeline config).
MODEL_NAME ?= privatetune-domain-lm
SERVE_HOST ?= 127.0.0.1
SERVE_PORT ?= 8000
TO_VERSION ?=

serve: $(STAMP)
	@test -n "$$PFT_SERVE_TOKEN" || { echo "PFT_SERVE_TOKEN is not set: the API needs a bearer token. Set one and give it to the clients:"; \
		echo "  export PFT_SERVE_TOKEN=\$$($(BIN)/python -c 'import secrets; print(secrets.token_urlsafe(32))')"; exit 1; }
	$(BIN)/python -m tasks.serve.app --host $(SERVE_HOST) --port $(SERVE_PORT) --model-name $(MODEL_NAME)

rollback: $(STAMP)
	@$(BIN)/python -m tasks.release.registry rollback --model-name $(MODEL_NAME) $(if $(TO_VERSION),--to-version $(TO_VERSION))

# Two pytest-xdist workers, each taking whole files (module fixtures such as the e2e's runs stay on one
# worker), longest files first (tests/conftest.py LONGEST_FIRST). TEST_WORKERS=0 runs in one process.
TEST_WORKERS ?= 2
XDIST = $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder)

test: setup
	$(BIN)/python -m pytest -q $(XDIST)

# The unit tier: everything not marked slow (e2e dag.test runs, live Airflow, browser, torchrun jobs).
test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow" $(XDIST)

# ruff (config: [tool.ruff] in pyproject.toml) and the import layers ([tool.importlinter]).
# All three run, and the target fails if any of them does. `ruff format .` formats; `ruff format --diff .` shows.
lint: $(STAMP)
	@rc=0; \
	echo "--- ruff check"; $(BIN)/ruff check . || rc=1; \
	echo "--- ruff format --check"; $(BIN)/ruff format --check --output-format=concise . || rc=1; \
	echo "--- lint-imports"; $(BIN)/lint-imports || rc=1; \
	exit $$rc

airflow: setup
	@echo "Airflow UI: http://localhost:8080  — user 'admin'; its password is printed below and kept in"
	@echo "  $(AIRFLOW_HOME)/simple_auth_manager_passwords.json.generated"
	@$(BIN)/airflow standalone

# The production topology as native processes (tasks/cluster): Postgres, Redis, an S3 server (moto), the
# MLflow server and Airflow on the CeleryExecutor with a default-queue and a gpu-queue worker. State, logs
# and generated secrets under $(PFT_HOME)/cluster/. Needs Debian's postgresql and redis-server.
cluster: $(STAMP)
	$(BIN)/python -m tasks.cluster up --home $(PFT_HOME) $(if $(PFT_CONFIG),--config $(PFT_CONFIG))

cluster-down: $(STAMP)
	$(BIN)/python -m tasks.cluster down --home $(PFT_HOME)

cluster-status: $(STAMP)
	$(BIN)/python -m tasks.cluster status --home $(PFT_HOME)

# Masking quality (precision/recall/F2 per entity) and throughput vs a plain Presidio loop.
bench-mask: $(STAMP)
	$(BIN)/python bench/bench_mask.py --out bench/results/mask.json

# Training: time/epoch, peak memory, exact match per method; DP-LoRA overhead; exact match at ε 1, 3, 8, ∞.
bench-train: $(STAMP)
	$(BIN)/python bench/bench_train.py --out bench/results/train.json

# Privacy attacks: canary exposure, MIA AUC and PII leaks of DP LoRA vs non-private controls (~20 min); then
# membership inference per data subject, a memorising control beside the demo recipe at privacy.unit subject.
bench-privacy: $(STAMP)
	$(BIN)/python bench/bench_privacy.py --out bench/results/privacy.json
	$(BIN)/python bench/bench_privacy_subject.py --out bench/results/privacy_subject.json

# Utility: test EM with CIs at ε 1, 2, 4, 8, ∞ × N 1, 4, 16 × the demo's records, same recipe and compute (~60 min).
bench-utility: $(STAMP)
	$(BIN)/python bench/bench_utility.py --out bench/results/utility.json

# Scale-out: masking one landing month of 8,000 records in shards on 1 vs 2 Celery workers of make cluster (~15 min).
bench-cluster: $(STAMP)
	$(BIN)/python bench/bench_cluster.py --out bench/results/cluster.json

clean-runs:
	rm -rf $(PFT_HOME)/runs $(PFT_HOME)/staging $(PFT_HOME)/quarantine

clean:
	rm -rf $(PFT_HOME) $(VENV)
