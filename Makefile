# hirl — the two commands a newcomer needs: `make demo` and `make test` (each does its own set-up).
SHELL := /bin/bash
.DEFAULT_GOAL := help

# User values (EXP, SET, DATA, CELL, OUT, ...) reach the commands through the environment, as HIRL_MAKE_*:
# read with $(value ...) so make expands nothing in them, and quoted as "$$VAR" in the recipes so the
# shell does not split or run them. Spaces, brackets, quotes, $(...) and backticks stay data.
# uval(NAME,default): NAME as given on the command line or in the environment, unexpanded; else default.
uval = $(if $(filter undefined,$(origin $(1))),$(2),$(value $(1)))
export HIRL_MAKE_EXP     := $(call uval,EXP,demo)
export HIRL_MAKE_UI_EXP  := $(call uval,EXP,)
export HIRL_MAKE_BACKEND := $(call uval,BACKEND,local)
export HIRL_MAKE_SET     := $(call uval,SET,)
export HIRL_MAKE_DATA    := $(call uval,DATA,)
export HIRL_MAKE_CELL    := $(call uval,CELL,)
export HIRL_MAKE_STAGE   := $(call uval,STAGE,)
export HIRL_MAKE_RANK    := $(call uval,RANK,)
export HIRL_MAKE_OUT     := $(call uval,OUT,)
export HIRL_MAKE_WATCH   := $(call uval,WATCH,)
export HIRL_MAKE_PORT    := $(call uval,PORT,5000)
# make tracking-up: TRACKING_DIR=<data, logs, pid files>, TRACKING_PORT=<MLflow port on 127.0.0.1>
export HIRL_TRACKING_DIR  := $(call uval,TRACKING_DIR,$(or $(value HIRL_TRACKING_DIR),/tmp/hirl-tracking))
export HIRL_TRACKING_PORT := $(call uval,TRACKING_PORT,$(or $(value HIRL_TRACKING_PORT),5050))
export HIRL_MAKE_FASHION_MNIST := $(call uval,FASHION_MNIST,$(or $(value HIRL_FASHION_MNIST),/usr/share/datasets/fashion-mnist))
# VENV is a make target too: a plain path (no spaces).
VENV    ?= .venv
PY      := $(VENV)/bin/python
HIRL    := $(PY) -m jobs
export HF_HUB_OFFLINE := 1
export PYTHONUNBUFFERED := 1

# SET="key=value ..." is split by hirl (--overrides), at spaces outside brackets and quotes.
# DATA=<ImageFolder root with train/ and val/> swaps the demo's Fashion-MNIST for the user's images.
HAVE_DATA := $(if $(strip $(HIRL_MAKE_DATA)),1)
SET_ARGS  := $(if $(strip $(HIRL_MAKE_SET)),--overrides "$$HIRL_MAKE_SET") \
             $(if $(HAVE_DATA),--set data.dataset=imagefolder "data.root='$$HIRL_MAKE_DATA'" pretrain.backbone.in_chans=3)
FORCE_ARG := $(if $(filter 1 yes true,$(value FORCE)),--force)
# Narrowing a sweep: CELL=<cell id prefix or key=value,...>, STAGE=<stage name>; OUT=<dir> for plan/report.
CELL_ARG  := $(if $(strip $(HIRL_MAKE_CELL)),--cell "$$HIRL_MAKE_CELL")
STAGE_ARG := $(if $(strip $(HIRL_MAKE_STAGE)),--stage "$$HIRL_MAKE_STAGE")
RANK_ARG  := $(if $(strip $(HIRL_MAKE_RANK)),--rank "$$HIRL_MAKE_RANK")
OUT_ARG   := $(if $(strip $(HIRL_MAKE_OUT)),--out "$$HIRL_MAKE_OUT")
FOLLOW_ARG := $(if $(filter 1 yes true,$(value FOLLOW)),--follow)
WATCH_ARG := $(if $(filter 1 yes true,$(HIRL_MAKE_WATCH)),--watch,$(if $(strip $(HIRL_MAKE_WATCH)),--watch "$$HIRL_MAKE_WATCH"))
EXP_ARGS  := "$$HIRL_MAKE_EXP" $(SET_ARGS)
# BACKEND=slurm: SITE=<site profile in slurm/: none (default), pyxis, apptainer, or a YAML path>.
# The SLURM clients need SLURM_CONF; with none set, the dev cluster's (make dev-slurm-up) is used.
export HIRL_SLURM_DIR := $(call uval,HIRL_SLURM_DIR,/tmp/hirl-slurm)
ifneq ($(strip $(call uval,SITE,)),)
export HIRL_SLURM_SITE := $(call uval,SITE,)
endif
ifeq ($(strip $(value SLURM_CONF)),)
ifneq ($(wildcard $(HIRL_SLURM_DIR)/slurm.conf),)
export SLURM_CONF := $(HIRL_SLURM_DIR)/slurm.conf
endif
endif

# BACKEND=k8s: the cluster is KUBECONFIG's; with none set, the dev API server's (make dev-k8s-up) is used.
export HIRL_K8S_DIR := $(call uval,HIRL_K8S_DIR,/tmp/hirl-k8s-api)
ifeq ($(strip $(value KUBECONFIG)),)
ifneq ($(wildcard $(HIRL_K8S_DIR)/kubeconfig),)
export KUBECONFIG := $(HIRL_K8S_DIR)/kubeconfig
endif
endif

# The shared image: REGISTRY=<host:port> (default $HIRL_REGISTRY) for push, or IMAGE_REPO=<repository>.
REGISTRY_V := $(call uval,REGISTRY,$(value HIRL_REGISTRY))
export HIRL_IMAGE_REPOSITORY := $(or $(call uval,IMAGE_REPO,),$(if $(strip $(REGISTRY_V)),$(REGISTRY_V)/hirl,hirl))
# make would put command-line variables into the recipes' environment expanded (running a $(shell ...)).
# After every uval above: unexport defines a variable, so its origin is no longer "undefined".
unexport EXP BACKEND SET DATA CELL STAGE RANK OUT WATCH FOLLOW FORCE PORT FASHION_MNIST SITE REGISTRY IMAGE_REPO
unexport TRACKING_DIR TRACKING_PORT

.PHONY: help setup data demo submit plan status logs cancel retry report ui test bench clean dev-slurm-up dev-slurm-down image push dev-engine-up dev-engine-down dev-k8s-up dev-k8s-down
.PHONY: tracking-up tracking-down
help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | expand -t 10

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	@touch $@

setup: $(VENV)/.installed  ## create .venv and install the project (torch pinned)

data:  ## make sure the demo data is there (Debian's dataset-fashion-mnist; or DATA=<ImageFolder>)
	@if [ "$(HAVE_DATA)" = 1 ]; then \
	  test -d "$$HIRL_MAKE_DATA/train" || { printf 'DATA=%s has no train/ folder (expected DATA/train/<class>/<image>)\n' "$$HIRL_MAKE_DATA"; exit 2; }; \
	elif ls "$$HIRL_MAKE_FASHION_MNIST"/train-images-idx3-ubyte* >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
	  echo "installing the demo data (Debian package dataset-fashion-mnist)"; \
	  (apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || \
	   (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null)) || exit 2; \
	else \
	  echo "Fashion-MNIST not found in $$HIRL_MAKE_FASHION_MNIST. Get it with: sudo apt-get install dataset-fashion-mnist"; \
	  echo "(or set HIRL_FASHION_MNIST=<dir with the idx files>, or run with DATA=<ImageFolder root>)"; exit 2; \
	fi

demo: setup data  ## the whole demo chain (MoCo v2 pre-train → KNN, linear, fine-tune, semi-sup 1 %/10 %, clustering, transfer) on the local backend
	@$(MAKE) --no-print-directory submit EXP=demo BACKEND=local

submit: setup  ## submit EXP, a whole sweep too (BACKEND=local, SET="key=value ...", FORCE=1 reruns finished stages)
	$(HIRL) submit $(EXP_ARGS) --backend "$$HIRL_MAKE_BACKEND" $(FORCE_ARG)

plan: setup  ## print the cells and stages of EXP with their dependencies (OUT=dir: rendered files); runs nothing
	$(HIRL) plan $(EXP_ARGS) --backend "$$HIRL_MAKE_BACKEND" $(OUT_ARG)

status: setup  ## cells x stages of EXP: job id, state, attempt, key metric (CELL=, WATCH=1 or seconds)
	$(HIRL) status $(EXP_ARGS) $(CELL_ARG) $(WATCH_ARG)

logs: setup  ## the log of one stage (STAGE=, CELL= for a sweep, RANK=, FOLLOW=1)
	$(HIRL) logs $(EXP_ARGS) $(CELL_ARG) $(STAGE_ARG) $(RANK_ARG) $(FOLLOW_ARG)

cancel: setup  ## stop EXP: the whole sweep, or CELL=, or STAGE= (and the stages after it)
	$(HIRL) cancel $(EXP_ARGS) $(CELL_ARG) $(STAGE_ARG)

retry: setup  ## rerun only the FAILED/KILLED stages of EXP (and what they held back); CELL=, STAGE=
	$(HIRL) retry $(EXP_ARGS) $(CELL_ARG) $(STAGE_ARG)

report: setup  ## the model-zoo table of EXP from MLflow: Markdown, CSV, bar chart (OUT=dir), logged to MLflow
	$(HIRL) report $(EXP_ARGS) $(OUT_ARG)

ui: setup  ## the MLflow UI on http://127.0.0.1:$(PORT); prints the runs table of the latest experiment (or EXP=)
	$(HIRL) ui --port "$$HIRL_MAKE_PORT" $(if $(strip $(HIRL_MAKE_UI_EXP)),--experiment "$$HIRL_MAKE_UI_EXP")

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

tracking-up: setup  ## a shared MLflow server on PostgreSQL for clusters (root: apt installs it); prints its export
	@bash tracking/up.sh

tracking-down:  ## stop exactly what tracking-up started (its data stays in TRACKING_DIR)
	@bash tracking/down.sh

dev-slurm-up:  ## a 2-node SLURM dev cluster on this host (root; apt installs it) for BACKEND=slurm
	@bash slurm/dev-up.sh >/dev/null && echo "SLURM dev cluster up; for sinfo/squeue: export SLURM_CONF=$$HIRL_SLURM_DIR/slurm.conf"

dev-slurm-down:  ## stop the SLURM dev cluster (exactly what dev-slurm-up started)
	@bash slurm/dev-down.sh

dev-k8s-up:  ## a Kubernetes API server with the JobSet/Argo/Kueue CRDs on 127.0.0.1 for BACKEND=k8s (no controllers)
	@K8S_API_DIR="$$HIRL_K8S_DIR" bash k8s/dev-api.sh up >/dev/null && echo "k8s dev API server up; for kubectl: export KUBECONFIG=$$HIRL_K8S_DIR/kubeconfig"

dev-k8s-down:  ## stop the dev API server (exactly what dev-k8s-up started)
	@K8S_API_DIR="$$HIRL_K8S_DIR" bash k8s/dev-api.sh down

clean:  ## remove outputs and the local MLflow store (asks nothing: be sure)
	rm -rf outputs mlruns mlartifacts mlflow.db
