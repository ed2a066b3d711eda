# hirl — the two commands a newcomer needs: `make demo` and `make test` (each does its own set-up).
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV    ?= .venv
PY      := $(VENV)/bin/python
HIRL    := $(PY) -m jobs
EXP     ?= demo
BACKEND ?= local
SET     ?=
DATA    ?=
PORT    ?= 5000
FASHION_MNIST ?= $(or $(HIRL_FASHION_MNIST),/usr/share/datasets/fashion-mnist)
export HF_HUB_OFFLINE := 1
export PYTHONUNBUFFERED := 1

# DATA=<ImageFolder root with train/ and val/> swaps the demo's Fashion-MNIST for the user's images.
ifneq ($(strip $(DATA)),)
SET += data.dataset=imagefolder data.root=$(DATA) pretrain.backbone.in_chans=3
endif
SET_ARGS := $(foreach kv,$(SET),--set $(kv))
FORCE_ARG := $(if $(filter 1 yes true,$(FORCE)),--force,)
# Narrowing a sweep: CELL=<cell id prefix or key=value,...>, STAGE=<stage name>; OUT=<dir> for plan/report.
CELL_ARG  := $(if $(strip $(CELL)),--cell '$(CELL)',)
STAGE_ARG := $(if $(strip $(STAGE)),--stage '$(STAGE)',)
RANK_ARG  := $(if $(strip $(RANK)),--rank $(RANK),)
OUT_ARG   := $(if $(strip $(OUT)),--out '$(OUT)',)
FOLLOW_ARG := $(if $(filter 1 yes true,$(FOLLOW)),--follow,)
WATCH_ARG := $(if $(filter 1 yes true,$(WATCH)),--watch,$(if $(strip $(WATCH)),--watch $(WATCH),))
# BACKEND=slurm: SITE=<site profile in slurm/: none (default), pyxis, apptainer, or a YAML path>.
# The SLURM clients need SLURM_CONF; with none set, the dev cluster's (make dev-slurm-up) is used.
SITE    ?=
HIRL_SLURM_DIR ?= /tmp/hirl-slurm
ifneq ($(strip $(SITE)),)
export HIRL_SLURM_SITE := $(SITE)
endif
ifeq ($(strip $(SLURM_CONF)),)
ifneq ($(wildcard $(HIRL_SLURM_DIR)/slurm.conf),)
export SLURM_CONF := $(HIRL_SLURM_DIR)/slurm.conf
endif
endif

# The shared image: REGISTRY=<host:port> (default $HIRL_REGISTRY) for push; passed through the
# environment, never pasted into a shell line.
REGISTRY ?= $(HIRL_REGISTRY)
export HIRL_IMAGE_REPOSITORY := $(or $(IMAGE_REPO),$(if $(strip $(REGISTRY)),$(REGISTRY)/hirl,hirl))

.PHONY: help setup data demo submit plan status logs cancel retry report ui test bench clean dev-slurm-up dev-slurm-down image push dev-engine-up dev-engine-down
help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | expand -t 10

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	@touch $@

setup: $(VENV)/.installed  ## create .venv and install the project (torch pinned)

data:  ## make sure the demo data is there (Debian's dataset-fashion-mnist; or DATA=<ImageFolder>)
	@if [ -n "$(strip $(DATA))" ]; then \
	  test -d "$(DATA)/train" || { echo "DATA=$(DATA) has no train/ folder (expected DATA/train/<class>/<image>)"; exit 2; }; \
	elif ls "$(FASHION_MNIST)"/train-images-idx3-ubyte* >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
	  echo "installing the demo data (Debian package dataset-fashion-mnist)"; \
	  (apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || \
	   (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null)) || exit 2; \
	else \
	  echo "Fashion-MNIST not found in $(FASHION_MNIST). Get it with: sudo apt-get install dataset-fashion-mnist"; \
	  echo "(or set HIRL_FASHION_MNIST=<dir with the idx files>, or run with DATA=<ImageFolder root>)"; exit 2; \
	fi

demo: setup data  ## the whole demo chain (MoCo v2 pre-train → KNN) on the local backend
	@$(MAKE) --no-print-directory submit EXP=demo BACKEND=local

submit: setup  ## submit EXP, a whole sweep too (BACKEND=local, SET="key=value ...", FORCE=1 reruns finished stages)
	$(HIRL) submit $(EXP) --backend $(BACKEND) $(SET_ARGS) $(FORCE_ARG)

plan: setup  ## print the cells and stages of EXP with their dependencies (OUT=dir: rendered files); runs nothing
	$(HIRL) plan $(EXP) --backend $(BACKEND) $(SET_ARGS) $(OUT_ARG)

status: setup  ## cells x stages of EXP: job id, state, attempt, key metric (CELL=, WATCH=1 or seconds)
	$(HIRL) status $(EXP) $(SET_ARGS) $(CELL_ARG) $(WATCH_ARG)

logs: setup  ## the log of one stage (STAGE=, CELL= for a sweep, RANK=, FOLLOW=1)
	$(HIRL) logs $(EXP) $(SET_ARGS) $(CELL_ARG) $(STAGE_ARG) $(RANK_ARG) $(FOLLOW_ARG)

cancel: setup  ## stop EXP: the whole sweep, or CELL=, or STAGE= (and the stages after it)
	$(HIRL) cancel $(EXP) $(SET_ARGS) $(CELL_ARG) $(STAGE_ARG)

retry: setup  ## rerun only the FAILED/KILLED stages of EXP (and what they held back); CELL=, STAGE=
	$(HIRL) retry $(EXP) $(SET_ARGS) $(CELL_ARG) $(STAGE_ARG)

report: setup  ## the model-zoo table of EXP from MLflow: Markdown, CSV, bar chart (OUT=dir), logged to MLflow
	$(HIRL) report $(EXP) $(SET_ARGS) $(OUT_ARG)

ui: setup  ## the MLflow UI on http://127.0.0.1:$(PORT)
	$(HIRL) ui --port $(PORT)

test: setup data  ## the whole test suite
	$(PY) -m pytest -q

bench: setup data  ## benchmarks → bench/results/*.json
	$(PY) bench/run.py

image: setup  ## build the shared image (docker/Dockerfile; tag = content hash) through DOCKER_HOST
	$(HIRL) image build

push: image  ## push the image to REGISTRY (host:port) and record its digest for cluster jobs
	$(HIRL) image push

dev-engine-up:  ## podman's Docker API + a registry on 127.0.0.1:5001 (root; apt installs them); prints exports
	@bash docker/engine-up.sh

dev-engine-down:  ## stop what dev-engine-up started
	@bash docker/engine-down.sh

dev-slurm-up:  ## a 2-node SLURM dev cluster on this host (root; apt installs it) for BACKEND=slurm
	@bash slurm/dev-up.sh >/dev/null && echo "SLURM dev cluster up; for sinfo/squeue: export SLURM_CONF=$(HIRL_SLURM_DIR)/slurm.conf"

dev-slurm-down:  ## stop the SLURM dev cluster (exactly what dev-slurm-up started)
	@bash slurm/dev-down.sh

clean:  ## remove outputs and the local MLflow store (asks nothing: be sure)
	rm -rf outputs mlruns mlartifacts mlflow.db
