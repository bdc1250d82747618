# BS-80K streaming weak-localisation engine. `make help` lists the targets.
# Every stage: make <stage> CONF=conf/<file>.yaml ARGS="key=value ..."  ==  python -m jobs <stage> --config ... key=value ...
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CONF ?= conf/default.yaml
ARGS ?=
DEMO := CONF=conf/demo.yaml
# The stages: every module and package of engine/stages not starting with _ (each declares itself: STAGE = Stage(...)),
# and bench (declared in engine/bench/__init__.py). A new stage module is a new target; `make help` shows its line.
STAGES := $(sort $(filter-out _%,$(basename $(notdir $(wildcard engine/stages/*.py))) \
	$(notdir $(patsubst %/__init__.py,%,$(wildcard engine/stages/*/__init__.py)))) bench)

.PHONY: help setup test coverage demo demo-seg all lint clean-demo bench-feed bench-gpu bench-scale $(STAGES)

help: ## list the targets (a stage's line comes from its declaration: python -m jobs --list)
	@{ if [ -x $(PY) ]; then $(PY) -m jobs --list; else printf '%s\t(its line: make setup, then make help)\n' $(STAGES); fi; \
		grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/'; } | sort

# pip's own output goes to .venv/install.log, shown only when the install fails
$(STAMP): pyproject.toml
	@echo "setup: installing the project into $(VENV) (once; pip's log: $(VENV)/install.log)"
	@$(PYTHON) -m venv $(VENV)
	@($(PY) -m pip install --quiet --upgrade pip && $(PY) -m pip install --quiet -e ".[test]") \
		> $(VENV)/install.log 2>&1 || (cat $(VENV)/install.log; exit 1)
	@touch $(STAMP)

setup: $(STAMP) ## create .venv and install the project (once; again only when pyproject.toml changes)

# one rule for every stage (bench reads conf/bench.yaml unless CONF is given on the command line)
STAGE_CONF = $(CONF)
$(STAGES): setup
	$(PY) -m jobs $@ --config $(STAGE_CONF) $(ARGS)

# `make cam` scores cam.split (test); the val heatmaps for the honest tuning of `make evaluate` come from a second
# pass over split=val (its own partitions, replaced if they exist).
CAM_VAL := cam.scope=split cam.split=val run.overwrite=true
# segtrain learns from the train split's pseudo masks: a third pass over split=train, only when segtrain.enabled.
CAM_TRAIN := cam.scope=split cam.split=train run.overwrite=true
SEG_ON = $(PY) -m jobs segtrain --config $(CONF) $(ARGS) --check-enabled

all: setup ## every stage on the configured data: index split train threshold infer cam boxes masks evaluate report
	$(PY) -m jobs index --config $(CONF) $(ARGS)
	$(PY) -m jobs split --config $(CONF) $(ARGS)
	$(PY) -m jobs train --config $(CONF) $(ARGS)
	$(PY) -m jobs threshold --config $(CONF) $(ARGS)
	$(PY) -m jobs infer --config $(CONF) $(ARGS)
	$(PY) -m jobs cam --config $(CONF) $(ARGS)
	$(PY) -m jobs cam --config $(CONF) $(ARGS) $(CAM_VAL)
	if $(SEG_ON); then $(PY) -m jobs cam --config $(CONF) $(ARGS) $(CAM_TRAIN); fi
	$(PY) -m jobs boxes --config $(CONF) $(ARGS)
	$(PY) -m jobs masks --config $(CONF) $(ARGS)
	if $(SEG_ON); then $(PY) -m jobs segtrain --config $(CONF) $(ARGS) && $(PY) -m jobs segment --config $(CONF) $(ARGS); fi
	$(PY) -m jobs evaluate --config $(CONF) $(ARGS)
	$(PY) -m jobs report --config $(CONF) $(ARGS)
BENCH_CONF = $(if $(filter command line,$(origin CONF)),$(CONF),conf/bench.yaml)
bench: STAGE_CONF = $(BENCH_CONF)
bench-gpu: setup ## make bench on one GPU (conf/bench_gpu.yaml): refine on, off, and off with one 8-thread actor instead of four
	$(PY) -m jobs bench --config conf/bench_gpu.yaml $(ARGS)
	$(PY) -m jobs bench --config conf/bench_gpu.yaml cam.refine=false $(ARGS)
	$(PY) -m jobs bench --config conf/bench_gpu.yaml cam.refine=false infer.actors=1 infer.num_gpus=1 infer.num_cpus=8 $(ARGS)
bench-feed: setup ## the feed alone: plain decode + letterbox per core vs the engine's stream into a null model actor
	$(PY) -m jobs bench --config $(BENCH_CONF) bench.only=feed $(ARGS)
# not part of `make test`: the full index (SCALE_PATIENTS=3225: ~82k images) takes ~15 min on 2 CPUs
SCALE_PATIENTS ?= 3225
bench-scale: setup ## the full index as a user lives with it (SCALE_PATIENTS=3225): synth, index, split, a tiny model, cam scope=all on a 128 x 64 canvas; images/s, memory, table bytes, browse page ms -> BENCHMARKS.md
	$(PY) -m engine.bench.scale --patients $(SCALE_PATIENTS) $(ARGS)

# DEMO_SEED: the seed's landscape canvas (512 x 1024 at full scale, half of it here), the published stride 32 and
# the seed's one view (POST), trained the same way, so that `make evaluate` scores the seed's settings on the same
# POST images beside ours.
DEMO_SEED := run.dir=runs/demo_seed canvas.height=256 canvas.width=512 model.output_stride=32 data.view=POST

demo: setup ## the whole pipeline on generated data (embedded Ray, CPU, tiny model), ending with evaluate + report
	@mkdir -p runs && date +%s > runs/.demo_started
	@$(PY) -m jobs synth --config conf/demo.yaml
	@rm -rf runs/demo runs/demo_seed
	@$(PY) -m jobs index --config conf/demo.yaml
	@$(PY) -m jobs split --config conf/demo.yaml
	@$(PY) -m jobs train --config conf/demo.yaml
	@$(PY) -m jobs threshold --config conf/demo.yaml
	@$(PY) -m jobs infer --config conf/demo.yaml
	@$(PY) -m jobs cam --config conf/demo.yaml
	@$(PY) -m jobs cam --config conf/demo.yaml $(CAM_VAL)
	@$(PY) -m jobs boxes --config conf/demo.yaml
	@$(PY) -m jobs masks --config conf/demo.yaml
	@# the seed run shares the demo's index, QC and split (same data, same seed): only the model differs
	@mkdir -p runs/demo_seed/tables && cp -r $(addprefix runs/demo/tables/,index gt_boxes qc splits) runs/demo_seed/tables/
	@$(PY) -m jobs train --config conf/demo.yaml $(DEMO_SEED)
	@$(PY) -m jobs threshold --config conf/demo.yaml $(DEMO_SEED)
	@$(PY) -m jobs cam --config conf/demo.yaml $(DEMO_SEED)
	@$(PY) -m jobs evaluate --config conf/demo.yaml evaluate.baseline_run=runs/demo_seed
	@$(PY) -m jobs report --config conf/demo.yaml
	@$(PY) -m jobs.demo_summary runs/demo runs/demo_seed --started $$(cat runs/.demo_started)
	@echo "report: $(CURDIR)/runs/demo/report/index.html"

demo-seg: setup ## after `make demo`: train the segmentation network on the demo's pseudo masks, evaluate it beside them
	@$(PY) -m jobs cam --config conf/demo.yaml $(CAM_TRAIN)
	@$(PY) -m jobs masks --config conf/demo.yaml
	@$(PY) -m jobs segtrain --config conf/demo.yaml
	@$(PY) -m jobs segment --config conf/demo.yaml
	@$(PY) -m jobs evaluate --config conf/demo.yaml evaluate.baseline_run=runs/demo_seed
	@$(PY) -m jobs.demo_summary runs/demo

test: setup ## run the test suite
	$(PY) -m pytest -q --durations=15

coverage: setup ## the test suite with engine/'s line coverage (pytest-cov; slower than make test)
	$(PY) -m pytest -q --cov=engine --cov-report=term:skip-covered

lint: setup ## ruff check and ruff format --check
	$(PY) -m ruff check engine jobs schemas tests
	$(PY) -m ruff format --check engine jobs schemas tests
