# BS-80K streaming weak-localisation engine. `make help` lists the targets.
# Every stage: make <stage> CONF=conf/<file>.yaml ARGS="key=value ..."  ==  python -m jobs.<stage> --config ... key=value ...
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CONF ?= conf/default.yaml
ARGS ?=
DEMO := CONF=conf/demo.yaml
STAGES := synth index split train threshold infer cam boxes masks segtrain segment evaluate report leaderboard bench browse export

.PHONY: help setup test demo demo-seg all lint clean-demo bench-feed bench-gpu $(STAGES)

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | sort

# pip's own output goes to .venv/install.log, shown only when the install fails
$(STAMP): pyproject.toml
	@echo "setup: installing the project into $(VENV) (once; pip's log: $(VENV)/install.log)"
	@$(PYTHON) -m venv $(VENV)
	@($(PY) -m pip install --quiet --upgrade pip && $(PY) -m pip install --quiet -e ".[test]") \
		> $(VENV)/install.log 2>&1 || (cat $(VENV)/install.log; exit 1)
	@touch $(STAMP)

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
masks: setup ## pseudo masks from the pseudo boxes (COCO RLE, original px) with QC reason codes -> masks, errors
	$(PY) -m jobs.masks --config $(CONF) $(ARGS)
segtrain: setup ## train a segmentation network on the kept pseudo masks (Ray Train, re-run to resume) -> seg_epochs, segnet/best.pt
	$(PY) -m jobs.segtrain --config $(CONF) $(ARGS)
segment: setup ## the segmentation network's masks of segtrain.split (all: whole index), actor pool -> seg_masks
	$(PY) -m jobs.segment --config $(CONF) $(ARGS)
evaluate: setup ## score CAM peaks + pseudo boxes against the Abnormal GT boxes (tuned on val) -> loc_metrics, COCO per split
	$(PY) -m jobs.evaluate --config $(CONF) $(ARGS)
report: setup ## one offline HTML page: curves, confusion matrix, grouped metrics, TP/FP/FN/TN gallery -> report/index.html
	$(PY) -m jobs.report --config $(CONF) $(ARGS)
leaderboard: setup ## test metrics of every run under leaderboard.runs
	$(PY) -m jobs.leaderboard --config $(CONF) $(ARGS)
export: setup ## DICOM runs: per scored frame a Secondary Capture (boxes, kept masks), Segmentations where possible -> exports, export/
	$(PY) -m jobs.export --config $(CONF) $(ARGS)

# `make cam` scores cam.split (test); the val heatmaps for the honest tuning of `make evaluate` come from a second
# pass over split=val (its own partitions, replaced if they exist).
CAM_VAL := cam.scope=split cam.split=val run.overwrite=true
# segtrain learns from the train split's pseudo masks: a third pass over split=train, only when segtrain.enabled.
CAM_TRAIN := cam.scope=split cam.split=train run.overwrite=true
SEG_ON = $(PY) -m jobs.segtrain --config $(CONF) $(ARGS) --check-enabled

all: setup ## every stage on the configured data: index split train threshold infer cam boxes masks evaluate report
	$(PY) -m jobs.index --config $(CONF) $(ARGS)
	$(PY) -m jobs.split --config $(CONF) $(ARGS)
	$(PY) -m jobs.train --config $(CONF) $(ARGS)
	$(PY) -m jobs.threshold --config $(CONF) $(ARGS)
	$(PY) -m jobs.infer --config $(CONF) $(ARGS)
	$(PY) -m jobs.cam --config $(CONF) $(ARGS)
	$(PY) -m jobs.cam --config $(CONF) $(ARGS) $(CAM_VAL)
	if $(SEG_ON); then $(PY) -m jobs.cam --config $(CONF) $(ARGS) $(CAM_TRAIN); fi
	$(PY) -m jobs.boxes --config $(CONF) $(ARGS)
	$(PY) -m jobs.masks --config $(CONF) $(ARGS)
	if $(SEG_ON); then $(PY) -m jobs.segtrain --config $(CONF) $(ARGS) && $(PY) -m jobs.segment --config $(CONF) $(ARGS); fi
	$(PY) -m jobs.evaluate --config $(CONF) $(ARGS)
	$(PY) -m jobs.report --config $(CONF) $(ARGS)
browse: setup ## local web page over every image of a run: sortable table, per-image CAM + GT/pseudo boxes (browse.port=8765)
	$(PY) -m jobs.browse --config $(CONF) $(ARGS)
BENCH_CONF = $(if $(filter command line,$(origin CONF)),$(CONF),conf/bench.yaml)
bench: setup ## the feed, then model-only vs plain loop vs engine, memory at N and 10 x N (CONF=conf/bench_gpu.yaml on a GPU)
	$(PY) -m jobs.bench --config $(BENCH_CONF) $(ARGS)
bench-gpu: setup ## make bench on one GPU (conf/bench_gpu.yaml): refine on, off, and off with one 8-thread actor instead of four
	$(PY) -m jobs.bench --config conf/bench_gpu.yaml $(ARGS)
	$(PY) -m jobs.bench --config conf/bench_gpu.yaml cam.refine=false $(ARGS)
	$(PY) -m jobs.bench --config conf/bench_gpu.yaml cam.refine=false infer.actors=1 infer.num_gpus=1 infer.num_cpus=8 $(ARGS)
bench-feed: setup ## the feed alone: plain decode + letterbox per core vs the engine's stream into a null model actor
	$(PY) -m jobs.bench --config $(BENCH_CONF) bench.only=feed $(ARGS)

# DEMO_SEED: the seed's landscape canvas (512 x 1024 at full scale, half of it here) and the published stride 32,
# trained the same way, so that `make evaluate` scores the seed's settings on the same data beside ours.
DEMO_SEED := run.dir=runs/demo_seed canvas.height=256 canvas.width=512 model.output_stride=32

demo: setup ## the whole pipeline on generated data (embedded Ray, CPU, tiny model), ending with evaluate + report
	@mkdir -p runs && date +%s > runs/.demo_started
	@$(PY) -m jobs.synth --config conf/demo.yaml
	@rm -rf runs/demo runs/demo_seed
	@$(PY) -m jobs.index --config conf/demo.yaml
	@$(PY) -m jobs.split --config conf/demo.yaml
	@$(PY) -m jobs.train --config conf/demo.yaml
	@$(PY) -m jobs.threshold --config conf/demo.yaml
	@$(PY) -m jobs.infer --config conf/demo.yaml
	@$(PY) -m jobs.cam --config conf/demo.yaml
	@$(PY) -m jobs.cam --config conf/demo.yaml $(CAM_VAL)
	@$(PY) -m jobs.boxes --config conf/demo.yaml
	@$(PY) -m jobs.masks --config conf/demo.yaml
	@# the seed run shares the demo's index, QC and split (same data, same seed): only the model differs
	@mkdir -p runs/demo_seed/tables && cp -r $(addprefix runs/demo/tables/,index gt_boxes qc splits) runs/demo_seed/tables/
	@$(PY) -m jobs.train --config conf/demo.yaml $(DEMO_SEED)
	@$(PY) -m jobs.threshold --config conf/demo.yaml $(DEMO_SEED)
	@$(PY) -m jobs.cam --config conf/demo.yaml $(DEMO_SEED)
	@$(PY) -m jobs.evaluate --config conf/demo.yaml evaluate.baseline_run=runs/demo_seed
	@$(PY) -m jobs.report --config conf/demo.yaml
	@$(PY) -m jobs.demo_summary runs/demo runs/demo_seed --started $$(cat runs/.demo_started)
	@echo "report: $(CURDIR)/runs/demo/report/index.html"

demo-seg: setup ## after `make demo`: train the segmentation network on the demo's pseudo masks, evaluate it beside them
	@$(PY) -m jobs.cam --config conf/demo.yaml $(CAM_TRAIN)
	@$(PY) -m jobs.masks --config conf/demo.yaml
	@$(PY) -m jobs.segtrain --config conf/demo.yaml
	@$(PY) -m jobs.segment --config conf/demo.yaml
	@$(PY) -m jobs.evaluate --config conf/demo.yaml evaluate.baseline_run=runs/demo_seed
	@$(PY) -m jobs.demo_summary runs/demo

test: setup ## run the test suite
	$(PY) -m pytest -q --durations=15

lint: setup ## ruff
	$(PY) -m ruff check engine jobs schemas tests
