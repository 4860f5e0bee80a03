# visionforge: `make demo` runs the pipeline on generated data, `make test` runs the tests.
# Both bootstrap .venv on a fresh machine; nothing needs installing by hand.
SHELL := bash
.SHELLFLAGS := -eo pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DVC_VENV := .venv-dvc
DVC_STAMP := $(DVC_VENV)/.installed
# Dagster's local storage (runs, materialisations, schedules' and sensors' state): SQLite in
# this directory. Absolute, as Dagster requires; override with `make ui DAGSTER_HOME=/elsewhere`.
DAGSTER_HOME ?= $(CURDIR)/.dagster
export DAGSTER_HOME
UI_HOST ?= 127.0.0.1
UI_PORT ?= 3000
MLFLOW_PORT ?= 5000
# This machine's pip config lists extra local indexes that may be absent; their warnings are noise.
PIP_QUIET := grep -v 'is ignored: it is neither a file nor a directory' || true

.PHONY: help setup browser demo repro ui test test-fast faults docker-test lint clean cpp-deps cpp demo-video detect-video postgres-deps

help:
	@echo "make demo       set up .venv, then materialise the whole asset graph (every task) on generated data"
	@echo "make repro      the same pipeline through DVC (dvc.yaml): only stages whose params or inputs changed run"
	@echo "make ui         the Dagster UI (webserver + daemon: schedules, sensors) on http://$(UI_HOST):$(UI_PORT)"
	@echo "                and the MLflow UI (runs, registry) on http://$(UI_HOST):$(MLFLOW_PORT)"
	@echo "make test       set up .venv, then run the whole test suite (what CI runs)"
	@echo "make test-fast  the tests without the slow end-to-end ones"
	@echo "make faults     kill every step of a tiny pipeline at 50 seeded moments, fill its disk, kill and stall its"
	@echo "                MLflow and S3 servers; check nothing is lost or half-written (build/faults.json)"
	@echo "make docker-test  build the project's image with a local Docker daemon and run the pipeline in it"
	@echo "make cpp        build the C++ detector into build/cpp (installs its Debian packages if missing)"
	@echo "make detect-video  run the C++ detector on the demo's traffic video (after make demo)"
	@echo "make lint       ruff"
	@echo "make clean      remove generated data and artefacts (keeps the environments)"

$(STAMP): pyproject.toml constraints.txt
	@echo "==> creating $(VENV): torch==2.13.0 (CPU build) first, then the pinned project"
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0 2>&1 | $(PIP_QUIET)
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev,deploy,kubeflow]' 2>&1 | $(PIP_QUIET)
	touch $@

# DVC gets its own environment (its antlr4 pin breaks Dagster's selection parser); its
# `dvc` executable is linked into .venv/bin so the project drives it by name.
$(DVC_STAMP): constraints-dvc.txt | $(STAMP)
	@echo "==> creating $(DVC_VENV) for DVC"
	test -x $(DVC_VENV)/bin/python || $(PYTHON) -m venv $(DVC_VENV)
	$(DVC_VENV)/bin/pip install --quiet -c constraints-dvc.txt 'dvc[s3]' 2>&1 | $(PIP_QUIET)
	ln -sf ../../$(DVC_VENV)/bin/dvc $(BIN)/dvc
	touch $@

setup: $(STAMP) $(DVC_STAMP)

$(DAGSTER_HOME)/dagster.yaml: pipelines/dagster.yaml
	mkdir -p $(DAGSTER_HOME)
	cp $< $@

# The whole asset graph (dataset -> model -> onnx -> int8 -> tensorrt -> validation -> release)
# in one Dagster run, recorded in DAGSTER_HOME so `make ui` shows it afterwards.
# The demo also renders a short traffic clip, so the C++ detector always has a video to run on.
DEMO_VIDEO := artifacts/traffic/video/traffic.mp4
DEMO_ONNX := artifacts/traffic/onnx/model.onnx

# torch.compile's one-off compilation (about 45 s on 2 cores) and the restorers' 1280x720 timings
# (a minute) are left to `visionforge benchmark`.
demo: setup $(DAGSTER_HOME)/dagster.yaml $(DEMO_VIDEO)
	@echo "==> demo: materialising every task's asset graph (traffic, sidd, gopro) on params.yaml (DAGSTER_HOME=$(DAGSTER_HOME))"
	@start=$$(date +%s); \
	$(BIN)/python -m pipelines.demo --set traffic.benchmark.compile=false --set 'sidd.benchmark.sizes=[[256, 256]]' --set 'gopro.benchmark.sizes=[[144, 256]]'; \
	echo "==> demo finished in $$(( $$(date +%s) - start )) s"
	@echo "==> the C++ detector on the demo video ($(DEMO_VIDEO)): make detect-video"

# DVC runs the steps of dvc.yaml (each calls the visionforge CLI); their MLflow runs share one parent.
repro: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" VISIONFORGE_PIPELINE_RUN=repro-$$(date +%Y%m%d-%H%M%S) $(BIN)/dvc repro

# Dagster's UI, and MLflow's on the embedded store (params.yaml: tracking) in its own process group,
# stopped with it. A tracking server (MLFLOW_TRACKING_URI) has its own UI. MLflow's async job
# runner (GenAI evaluations) is off: nothing here uses it, and it costs a dozen processes.
ui: setup $(DAGSTER_HOME)/dagster.yaml
	@uri=$$($(BIN)/python -m ops.tracking uri); \
	case "$$uri" in \
	  sqlite:*) MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false setsid $(BIN)/mlflow ui --workers 1 --backend-store-uri "$$uri" \
	              -h $(UI_HOST) -p $(MLFLOW_PORT) & mlflow_pid=$$!; \
	            trap 'kill -- -$$mlflow_pid 2>/dev/null' EXIT; \
	            echo "==> MLflow UI on http://$(UI_HOST):$(MLFLOW_PORT) ($$uri)";; \
	  *) echo "==> MLflow: tracking server $$uri (its own UI)";; \
	esac; \
	$(BIN)/dagster dev -w workspace.yaml -h $(UI_HOST) -p $(UI_PORT)

# Headless Chromium for the UI test (tests/pipelines/test_ui.py): Debian's package, as Playwright
# cannot download its own browsers here. Without root or apt the test skips, saying why.
browser:
	@command -v chromium >/dev/null || apt-get install -y -q chromium >/dev/null 2>&1 || \
	  { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1; } || \
	  echo "==> could not install Debian's chromium: the browser test will be skipped"

# The C++ detector (cpp/): Debian's toolchain and libraries, then CMake + Ninja into build/cpp.
# Installed when missing (root, or sudo when available), as CI starts from a clean machine.
CPP_PACKAGES := cmake ninja-build g++ libopencv-dev libgtest-dev nlohmann-json3-dev libssl-dev
CPP_BUILD := build/cpp
CPP_STAMP := build/.cpp-packages
CPP_JOBS ?= 2

$(CPP_STAMP):
	@missing=$$(for p in $(CPP_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "==> installing Debian packages for the C++ detector:" $$missing; \
	  if [ "$$(id -u)" = 0 ]; then sudo=; elif command -v sudo >/dev/null; then sudo=sudo; \
	  else echo "need root or sudo to apt-get install" $$missing >&2; exit 1; fi; \
	  $$sudo apt-get update -q >/dev/null && \
	  $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing >/dev/null; \
	fi
	mkdir -p $(@D) && touch $@

cpp-deps: $(CPP_STAMP)

cpp: $(STAMP) $(CPP_STAMP)
	cmake -S cpp -B $(CPP_BUILD) -G Ninja
	cmake --build $(CPP_BUILD) --parallel $(CPP_JOBS)

# A 5 s procedural traffic clip with moving vehicles (ops/detection/video.py).
$(DEMO_VIDEO): | $(STAMP)
	$(BIN)/python -m ops.detection.video $@

demo-video: $(DEMO_VIDEO)

$(DEMO_ONNX): | $(STAMP)
	$(BIN)/visionforge export traffic

detect-video: cpp $(DEMO_VIDEO) $(DEMO_ONNX)
	$(CPP_BUILD)/visionforge-detect $(DEMO_ONNX) $(DEMO_VIDEO) \
	  --output $(basename $(DEMO_VIDEO))_detections.mp4 --json $(basename $(DEMO_VIDEO))_detections.jsonl

# PostgreSQL 15 for the deployment tests (tests/deploy, tests/pipelines/test_doctor.py): Debian's
# server binaries, started by the tests themselves in temporary directories on 127.0.0.1.
postgres-deps:
	@test -x /usr/lib/postgresql/15/bin/postgres || { \
	  echo "==> installing Debian's PostgreSQL 15 for the deployment tests"; \
	  if [ "$$(id -u)" = 0 ]; then sudo=; elif command -v sudo >/dev/null; then sudo=sudo; \
	  else echo "==> no root or sudo: the PostgreSQL tests will be skipped"; exit 0; fi; \
	  $$sudo apt-get update -q >/dev/null && \
	  $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends postgresql-15 >/dev/null; }

# Two pytest workers, each taking whole files (module fixtures are built once): the suite is
# mostly subprocesses and servers waiting on each other, so 2 workers on 2 cores took it from
# 21 to 15 minutes (measured).
PYTEST_WORKERS = -n 2 --dist loadfile

test: setup browser cpp-deps postgres-deps
	$(BIN)/python -m pytest -ra -m 'not docker' $(PYTEST_WORKERS)

# The project's image built and run by a Docker daemon the test starts (tests/docker): minutes of
# image building, so it is its own target rather than part of make test.
docker-test: setup
	$(BIN)/python -m pytest -ra -m docker tests/docker

test-fast: setup
	$(BIN)/python -m pytest -ra -m 'not slow and not docker' $(PYTEST_WORKERS)

# Faults (benchmarks/faults.py): SIGKILL each step of a tiny pipeline at FAULT_KILLS seeded moments,
# run each step on a disk that fills part-way (FAULT_DISKS per step: a tmpfs, which needs root;
# skipped, saying so, without it), and kill, stop and stall the MLflow server and the S3 server
# under it. Each step runs again and the invariants are checked; the table is printed and written
# to build/faults.json. Exit status 1 on any violation. The test suite runs a kill per step.
FAULT_KILLS ?= 50
FAULT_DISKS ?= 1
FAULT_SEED ?= 0
faults: setup
	$(BIN)/python -m benchmarks.faults --kills $(FAULT_KILLS) --disk-full $(FAULT_DISKS) --services \
		--seed $(FAULT_SEED) --out build/faults.json

lint: setup
	$(BIN)/ruff check ops assets pipelines tests benchmarks

clean:
	rm -rf data artifacts
