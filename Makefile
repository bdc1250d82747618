# BS-80K streaming weak-localisation engine. `make help` lists the targets.
# Every stage: make <stage> CONF=conf/<file>.yaml ARGS="key=value ..."  ==  python -m jobs.<stage> --config ... key=value ...
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CONF ?= conf/default.yaml
ARGS ?=
DEMO := CONF=conf/demo.yaml
STAGES := synth index split train threshold infer cam boxes leaderboard bench

.PHONY: help setup test demo lint clean-demo $(STAGES)

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | sort

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

setup: $(STAMP) ## create .venv and install the project (once; again only when pyproject.toml changes)

synth: setup ## generate a synthetic BS-80K-shaped dataset (synth.out, synth.patients, synth.seed)
	$(PY) -m jobs.synth --config $(CONF) $(ARGS)
index: setup ## index data.root -> tables index, gt_boxes, errors
	$(PY) -m jobs.index --config $(CONF) $(ARGS)
split: setup ## patient-level train/val/test split -> table splits
	$(PY) -m jobs.split --config $(CONF) $(ARGS)
train: setup ## train the classifier on Ray Train (re-run to resume) -> epochs, preds, model/best.pt
	$(PY) -m jobs.train --config $(CONF) $(ARGS)
threshold: setup ## choose the threshold on val -> thresholds, threshold.json
	$(PY) -m jobs.threshold --config $(CONF) $(ARGS)
infer: setup ## predict infer.split with the model actor pool -> preds, metrics
	$(PY) -m jobs.infer --config $(CONF) $(ARGS)
cam: setup ## probabilities + CAM + pseudo boxes in one pass (cam.scope=all: whole index) -> preds, heatmaps, boxes, meta
	$(PY) -m jobs.cam --config $(CONF) $(ARGS)
boxes: setup ## recompute boxes from stored heatmaps with new boxes.* (no model)
	$(PY) -m jobs.boxes --config $(CONF) $(ARGS)
leaderboard: setup ## test metrics of every run under leaderboard.runs
	$(PY) -m jobs.leaderboard --config $(CONF) $(ARGS)
bench: setup ## model-only vs plain loop vs engine, memory at N and 10 x N (CONF=conf/bench_gpu.yaml on a GPU)
	$(PY) -m jobs.bench --config $(if $(filter command line,$(origin CONF)),$(CONF),conf/bench.yaml) $(ARGS)

demo: setup ## the whole pipeline on generated data (embedded Ray, CPU, tiny model)
	@test -d data/synth || $(PY) -m jobs.synth --config conf/demo.yaml
	rm -rf runs/demo
	$(PY) -m jobs.index --config conf/demo.yaml
	$(PY) -m jobs.split --config conf/demo.yaml
	$(PY) -m jobs.train --config conf/demo.yaml
	$(PY) -m jobs.threshold --config conf/demo.yaml
	$(PY) -m jobs.infer --config conf/demo.yaml
	$(PY) -m jobs.cam --config conf/demo.yaml
	$(PY) -m jobs.boxes --config conf/demo.yaml

test: setup ## run the test suite
	$(PY) -m pytest -q

lint: setup ## ruff
	$(PY) -m ruff check engine jobs schemas tests
