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

.PHONY: help setup data demo submit plan status ui test bench clean
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

submit: setup  ## submit EXP (BACKEND=local, SET="key=value ...", FORCE=1 reruns finished stages)
	$(HIRL) submit $(EXP) --backend $(BACKEND) $(SET_ARGS) $(FORCE_ARG)

plan: setup  ## print the stages of EXP and their dependencies; runs nothing
	$(HIRL) plan $(EXP) $(SET_ARGS)

status: setup  ## stage runs of EXP with their states, run ids and key metrics
	$(HIRL) status $(EXP) $(SET_ARGS)

ui: setup  ## the MLflow UI on http://127.0.0.1:$(PORT)
	$(HIRL) ui --port $(PORT)

test: setup data  ## the whole test suite
	$(PY) -m pytest -q

bench: setup data  ## benchmarks → bench/results/*.json
	$(PY) bench/run.py

clean:  ## remove outputs and the local MLflow store (asks nothing: be sure)
	rm -rf outputs mlruns mlartifacts mlflow.db
