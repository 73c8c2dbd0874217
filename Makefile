# cellfcn: Marzo & La Rosa (2016) with real BVLC Caffe. `make help` lists the targets.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:

# Variables are checked before any work starts, by make's own functions: a value is never run in a shell, and
# a bad one is one line, not a usage dump, not after the data stage. First, a value given on the command line or
# in the environment may not contain `$`: make would expand it, and run any $(shell ...) in it, at its first use.
USER_VARS := PYTHON_BASE QUICK RUNS NET EXPERIMENTS SEED FORMAT BATCH CONFIG EPOCHS EPOCHS_PRETRAIN \
  EPOCHS_FINETUNE SYN_ARGS REAL_ARGS IN OUT MODEL SCHEDULER WORKERS THREADS DIAMETER ENGINE GPU GPU_ID CUDA_ARCH CAFFE_ROOT CAFFE PYCAFFE \
  CAFFE_SRC BENCH_PEER TEST_ARGS RELEASES WHEEL_CACHE
$(foreach v,$(USER_VARS),$(if $(filter command% environment%,$(origin $(v))),$(if $(findstring $$,$(value $(v))),\
  $(error $(v) must not contain '$$': make would expand it))))

ROOT := $(CURDIR)
PYTHON_BASE ?= python3
VENV := $(ROOT)/.venv
PY := $(VENV)/bin/python
QUICK ?=
RUNS ?= $(ROOT)/runs$(if $(filter 1,$(QUICK)),/quick,)
DATA := $(RUNS)/data
# The mnfinder wheel's download cache (follows RUNS=; the tests point it at one shared copy).
WHEEL_CACHE ?= $(RUNS)/cache
# NET=<variant> of prototxt/net.py trains and evaluates that net; its runs go to $(RUNS)/net-<variant>/ and
# share the data.
NET ?= fcrn_a
NET_RUNS := $(RUNS)$(if $(filter-out fcrn_a,$(NET)),/net-$(NET),)
# make experiments: the default set (121 min measured on 2 cores), or full (the reproduce schedule, more seeds).
EXPERIMENTS ?= default
SEED ?= 0
FORMAT ?= hdf5
BATCH ?= 8
CONFIG ?= default
EPOCHS ?=

# What reaches a shell is checked for the characters a shell would act on. Counts are digits only; a path
# (always double-quoted in the recipes) has no " ` or \; an argument list has no shell syntax at all.
open_paren := (
close_paren := )
no_digits = $(strip $(subst 0, ,$(subst 1, ,$(subst 2, ,$(subst 3, ,$(subst 4, ,$(subst 5, ,$(subst 6, ,\
  $(subst 7, ,$(subst 8, ,$(subst 9, ,$(1))))))))))))
is_count = $(and $(call is_word,$(1)),$(if $(call no_digits,$(1)),,1))
is_positive = $(and $(call is_count,$(1)),$(if $(filter 0%,$(1)),,1))
is_word = $(filter 1,$(words $(1)))
is_one_of = $(and $(call is_word,$(1)),$(filter $(2),$(1)))
is_address = $(and $(call is_word,$(1)),$(word 2,$(subst ://, ,$(1))),$(if $(call has_any,$(1),$(quote_breakers)),,1))
has_any = $(strip $(foreach c,$(2),$(findstring $(c),$(1))))
quote_breakers := \ " `
shell_syntax := $(quote_breakers) ' ; & | < > * ? ~ $(open_paren) $(close_paren) { } [ ] !
$(foreach v,PYTHON_BASE RUNS IN OUT MODEL CAFFE_ROOT CAFFE PYCAFFE CAFFE_SRC BENCH_PEER WHEEL_CACHE,\
  $(if $(call has_any,$($(v)),$(quote_breakers)),$(error $(v) must not contain " ` or \, not '$($(v))')))
$(foreach v,SYN_ARGS REAL_ARGS TEST_ARGS RELEASES CUDA_ARCH,\
  $(if $(call has_any,$($(v)),$(shell_syntax)),\
    $(error $(v) must be plain arguments without shell syntax, not '$($(v))')))
$(if $(and $(filter default paper,$(CONFIG)),$(call is_word,$(CONFIG))),,$(error CONFIG must be default or paper, not '$(CONFIG)'))
$(if $(and $(filter hdf5 lmdb,$(FORMAT)),$(call is_word,$(FORMAT))),,$(error FORMAT must be hdf5 or lmdb, not '$(FORMAT)'))
$(if $(call is_count,$(SEED)),,$(error SEED must be a non-negative integer, not '$(SEED)'))
$(if $(call is_positive,$(BATCH)),,$(error BATCH must be a positive integer, not '$(BATCH)'))
$(foreach v,EPOCHS EPOCHS_PRETRAIN EPOCHS_FINETUNE,\
  $(if $($(v)),$(if $(call is_positive,$($(v))),,$(error $(v) must be a positive integer, not '$($(v))'))))
$(if $(GPU_ID),$(if $(call is_count,$(GPU_ID)),,$(error GPU_ID must be a device id, not '$(GPU_ID)')))
$(if $(and $(filter fcrn_a k5 pool2 wide contour contour_skip contour_skip_mn contour_skip_mnw,$(NET)),$(call is_word,$(NET))),,$(error NET must be fcrn_a, k5, pool2, wide, contour, contour_skip, contour_skip_mn or contour_skip_mnw, not '$(NET)'))
$(if $(and $(filter default full,$(EXPERIMENTS)),$(call is_word,$(EXPERIMENTS))),,$(error EXPERIMENTS must be default or full, not '$(EXPERIMENTS)'))
# make segment IN=<folder> [MODEL=<caffemodel>] [OUT=<folder>] [DIAMETER=<px>|auto] [SCHEDULER=tcp://host:8786] [WORKERS=n]
# MODEL empty: for segment, the model of $(NET_RUNS)/eval/objects.json with the highest validation F1; for
# export, $(NET_RUNS)/finetune/final.caffemodel.
MODEL ?=
OUT ?= $(RUNS)/segment
DIAMETER ?= auto
# ENGINE=onnx segments with a package of `make export` (MODEL=<zip>) in onnxruntime instead of Caffe.
ENGINE ?= caffe
# make experiments: WORKERS=n a Dask LocalCluster of n processes, SCHEDULER=tcp://host:8786 a running cluster,
# THREADS=n Caffe threads per run (default: the cores per worker).
SCHEDULER ?=
WORKERS ?=
THREADS ?=
ifneq ($(filter segment,$(MAKECMDGOALS)),)
  $(if $(strip $(IN)),,$(error IN must name a folder of TIFF/PNG images: make segment IN=<folder>))
  $(if $(call is_one_of,$(ENGINE),caffe onnx),,$(error ENGINE must be caffe or onnx, not '$(ENGINE)'))
  $(if $(and $(filter onnx,$(ENGINE)),$(if $(MODEL),,1)),$(error ENGINE=onnx needs MODEL=<package .bioimageio.zip of make export>))
  $(if $(call is_one_of,$(DIAMETER),auto),,$(if $(and $(filter 1,$(words $(DIAMETER))),$(subst .,,$(DIAMETER)),\
    $(if $(call no_digits,$(subst .,,$(DIAMETER))),,1)),,\
    $(error DIAMETER must be the typical nucleus diameter in pixels of your images (e.g. 24) or auto, not '$(DIAMETER)')))
endif
ifneq ($(filter segment experiments,$(MAKECMDGOALS)),)
  $(if $(WORKERS),$(if $(call is_count,$(WORKERS)),,$(error WORKERS must be a non-negative integer (0: serial), not '$(WORKERS)')))
  $(if $(SCHEDULER),$(if $(call is_address,$(SCHEDULER)),,$(error SCHEDULER must be an address like tcp://host:8786, not '$(SCHEDULER)')))
endif
$(if $(THREADS),$(if $(call is_positive,$(THREADS)),,$(error THREADS must be a positive integer, not '$(THREADS)')))

# GPU=1 trains and evaluates with the CUDA build on device 0; GPU=<n> (n > 1) or GPU_ID=<n> on device n.
# Unset means CPU.
GPU ?=
GPU_ID ?= $(if $(filter 1,$(GPU)),0,$(GPU))
CUDA_ARCH ?=
ifneq ($(strip $(GPU)),)
  ifneq ($(filter-out 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15,$(GPU)),)
    $(error GPU must be 1 or a device id; GPU_ID=<n> also picks the device)
  endif
  CAFFE_PREFIX := $(ROOT)/.caffe-cuda
  GPU_ARGS := --gpu $(GPU_ID)
  # Say so before downloading CUDA libraries and compiling for minutes (building alone needs no device).
  ifneq ($(filter data pretrain finetune evaluate reproduce experiments,$(MAKECMDGOALS)),)
    ifeq ($(shell nvidia-smi -L 2>/dev/null | grep -c '^GPU $(GPU_ID):'),0)
      $(error GPU=$(GPU): no CUDA device $(GPU_ID) on this machine (nvidia-smi lists none); leave GPU unset to run on the CPU)
    endif
  endif
else
  CAFFE_PREFIX := $(ROOT)/.caffe
  GPU_ARGS :=
endif

# Your own Caffe instead of ours: CAFFE_ROOT=<prefix>, or CAFFE=<binary> PYCAFFE=<dir>.
ifdef CAFFE_ROOT
  CAFFE ?= $(CAFFE_ROOT)/bin/caffe
  PYCAFFE ?= $(firstword $(wildcard $(CAFFE_ROOT)/lib/python3/dist-packages $(CAFFE_ROOT)/python) $(CAFFE_ROOT)/python)
endif
ifdef CAFFE
  OWN_CAFFE := 1
  export CAFFE PYCAFFE
  export PYTHONPATH := $(PYCAFFE)$(if $(PYTHONPATH),:$(PYTHONPATH),)
else
  OWN_CAFFE :=
  # The venv finds .caffe's pycaffe by itself (make env); the CUDA build's goes first for GPU=1.
  ifneq ($(strip $(GPU)),)
    export PYTHONPATH := $(CAFFE_PREFIX)/lib/python3/dist-packages$(if $(PYTHONPATH),:$(PYTHONPATH),)
  endif
endif
export CAFFE_ROOT

# QUICK=1: a few-minute smoke run of the whole pipeline (the tests use it).
ifeq ($(QUICK),1)
  SYN_ARGS ?= --n-images 6 --image-size 256 --n-train 48 --n-test 16
  REAL_ARGS ?= --n-train 12 --max-test-images 3
  EPOCHS_PRETRAIN ?= 2
  EPOCHS_FINETUNE ?= 2
else
  SYN_ARGS ?=
  REAL_ARGS ?=
  EPOCHS_PRETRAIN ?= $(if $(EPOCHS),$(EPOCHS),)
  EPOCHS_FINETUNE ?= $(if $(EPOCHS),$(EPOCHS),)
endif
EPOCH_ARGS_PRETRAIN := $(if $(EPOCHS_PRETRAIN),--epochs $(EPOCHS_PRETRAIN),)
EPOCH_ARGS_FINETUNE := $(if $(EPOCHS_FINETUNE),--epochs $(EPOCHS_FINETUNE),)

.PHONY: help deps env caffe test data pretrain finetune instance evaluate report reproduce readme-tables segment export bench experiments \
        docker-check prototxt clean distclean

help: ## list the targets
	@echo "cellfcn: fully-convolutional cell segmentation with BVLC Caffe (Marzo & La Rosa, 2016)"
	@echo
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/^([a-z-]+):.*## /  make \1\t/' | expand -t 22
	@echo
	@echo "Variables: GPU=1 [GPU_ID=n] CUDA_ARCH=\"80 90\" QUICK=1 SEED=$(SEED) FORMAT=hdf5|lmdb BATCH=$(BATCH)"
	@echo "           EPOCHS=n CONFIG=default|paper NET=fcrn_a|k5|pool2|wide|contour|contour_skip|contour_skip_mn|contour_skip_mnw EXPERIMENTS=default|full"
	@echo "           RUNS=$(RUNS) BENCH_PEER=0|1 TEST_ARGS=<pytest args>"
	@echo "           CAFFE_ROOT=<prefix> | CAFFE=<bin> PYCAFFE=<dir>  (use your own Caffe build)"
	@echo "  segment: IN=<folder> MODEL=<caffemodel> OUT=<folder> DIAMETER=<px>|auto ENGINE=caffe|onnx SCHEDULER=tcp://host:8786 WORKERS=n (0: serial)"
	@echo "  experiments: EXPERIMENTS=default|full WORKERS=n SCHEDULER=tcp://host:8786 THREADS=n"

deps: ## install the Debian build/runtime packages (root; otherwise prints the command)
	@tools/deps.sh

$(VENV)/.stamp: requirements.txt pyproject.toml tools/make_env.sh
	@tools/make_env.sh "$(PYTHON_BASE)" "$(VENV)"

env: $(VENV)/.stamp ## create .venv: pinned packages, this repository in editable mode, our pycaffe

ifeq ($(OWN_CAFFE),)
caffe: deps env ## build BVLC Caffe + pycaffe into .caffe/ (GPU=1: CUDA build into .caffe-cuda/)
ifeq ($(strip $(GPU)),)
	@tools/build_caffe.sh --prefix "$(CAFFE_PREFIX)" --python "$(PY)" $(if $(CAFFE_SRC),--src "$(CAFFE_SRC)",)
else
	@libs=$$(tools/cuda_libs.sh) && arch="$(if $(CUDA_ARCH),$(CUDA_ARCH),$$(tools/cuda_arch.sh))" && \
	  tools/build_caffe.sh --prefix "$(CAFFE_PREFIX)" --python "$(PY)" $(if $(CAFFE_SRC),--src "$(CAFFE_SRC)",) \
	    --gpu --cuda-arch "$$arch" --cuda-libs "$$libs"
endif
else
caffe: env
	@test -x "$(CAFFE)" || { echo "error: CAFFE=$(CAFFE) is not an executable caffe binary" >&2; exit 1; }
	@test -f "$(PYCAFFE)/caffe/__init__.py" || { echo "error: PYCAFFE=$(PYCAFFE) holds no caffe package" >&2; exit 1; }
	@echo "Using your Caffe: $(CAFFE) (pycaffe: $(PYCAFFE))"
endif

# The PyTorch speed peer of bench/: `make bench` installs it; `make test` runs its tests only once it is
# installed, and BENCH_PEER=0 leaves them out even then.
BENCH_PEER ?= 1
$(VENV)/.bench-stamp: bench/requirements.txt $(VENV)/.stamp
	@$(PY) -m pip install -q --disable-pip-version-check -r bench/requirements.txt && touch $@

test: caffe ## run the test suite (builds everything it needs first; installs no PyTorch)
	@if [ "$(BENCH_PEER)" = 1 ] && [ -f "$(VENV)/.bench-stamp" ]; then skip=; else \
	  skip=--ignore=tests/test_bench_net.py; echo "test: leaving out tests/test_bench_net.py, the PyTorch peer's" \
	    "tests ($(if $(filter 1,$(BENCH_PEER)),PyTorch not installed: \`make bench\` installs it,BENCH_PEER=$(BENCH_PEER)))"; fi; \
	$(PY) -m pytest -q tests $$skip $(TEST_ARGS)

prototxt: env ## regenerate the committed prototxt/ and solvers/ from net.py and solve.py
	@$(PY) -m prototxt.net --out prototxt
	@$(PY) -m solvers.solve --write-defaults solvers

# Each stage's wall time goes to $(RUNS)/timings.tsv; `make reproduce` prints it.
TIMED = tools/stage_time.sh "$(NET_RUNS)"

data: caffe ## build the synthetic and real datasets under runs/data/
	@$(TIMED) data-synthetic $(PY) -m data_prep synthetic --out "$(DATA)/synthetic" --seed $(SEED) --format both \
	  --preview "$(DATA)/synthetic_preview.png" $(SYN_ARGS)
	@$(TIMED) data-real $(PY) -m data_prep mnfinder --out "$(DATA)/real" --seed $(SEED) --format both \
	  --preview "$(DATA)/real_preview.png" --cache "$(WHEEL_CACHE)" $(REAL_ARGS)

pretrain: data ## train FCRN-A on the synthetic patches with `caffe train` (resumes if interrupted)
	@$(TIMED) pretrain $(PY) -m tools.train --stage pretrain --data "$(DATA)/synthetic" --out "$(NET_RUNS)/pretrain" \
	  --format $(FORMAT) --batch $(BATCH) --config $(CONFIG) --seed $(SEED) --net $(NET) $(EPOCH_ARGS_PRETRAIN) $(GPU_ARGS)

finetune: pretrain ## fine-tune the pretrained model on the real patches (`caffe train --weights`)
	@$(TIMED) finetune $(PY) -m tools.train --stage finetune --data "$(DATA)/real" --out "$(NET_RUNS)/finetune" \
	  --weights "$(NET_RUNS)/pretrain/final.caffemodel" \
	  --format $(FORMAT) --batch $(BATCH) --config $(CONFIG) --seed $(SEED) --net $(NET) $(EPOCH_ARGS_FINETUNE) $(GPU_ARGS)

# The instance-aware 3-class net (prototxt/net.py's contour_skip) that the object-level table scores beside FCRN-A.
INSTANCE_NET := contour_skip
CONTOUR_RUNS := $(RUNS)/net-$(INSTANCE_NET)
WITH_CONTOUR := $(filter fcrn_a,$(NET))
instance: data ## train the instance-aware 3-class net (NET=contour_skip: pretrain, fine-tune) -> runs/net-contour_skip/
	@$(MAKE) --no-print-directory finetune NET=$(INSTANCE_NET)

evaluate: finetune $(if $(WITH_CONTOUR),instance,) ## Table 1, Otsu baseline, ROC, object-level table -> runs/eval/
	@$(TIMED) evaluate $(PY) -m tools.evaluate --runs "$(NET_RUNS)" --data "$(DATA)" --out "$(NET_RUNS)/eval" \
	  $(if $(WITH_CONTOUR),--contour-runs "$(CONTOUR_RUNS)",) $(if $(filter 1,$(QUICK)),--train-images 3,) $(GPU_ARGS)
	@$(TIMED) magnification $(PY) -m tools.magnification --objects "$(NET_RUNS)/eval/objects.json" \
	  --wheel "$(WHEEL_CACHE)/mnfinder-1.2.3-py3-none-any.whl" --out "$(NET_RUNS)/eval" \
	  $(if $(filter 1,$(QUICK)),--max-images 2,) $(GPU_ARGS)

report: evaluate ## one HTML + Markdown report under runs/report/
	@$(TIMED) report $(PY) -m tools.report --runs "$(NET_RUNS)" --data "$(DATA)" --out "$(NET_RUNS)/report"

reproduce: report ## the whole pipeline: data, pretrain, fine-tune, evaluate, report; prints Table 1
	@cat "$(NET_RUNS)/eval/table1.md"
	@echo; echo "Wall time of each stage's latest run ($(NET_RUNS)/timings.tsv$(if $(WITH_CONTOUR), and the contour net's):"
	@awk -F'\t' 'FNR == 1 && NR > 1 { prefix = "contour " } { t += $$2; \
	  printf "  %-23s %8.1f s\n", prefix $$1, $$2 } END { printf "  %-23s %8.1f s (%.1f min)\n", "total", t, t / 60 }' \
	  "$(NET_RUNS)/timings.tsv" $(if $(WITH_CONTOUR),"$(CONTOUR_RUNS)/timings.tsv",)
	@echo "Report: $(NET_RUNS)/report/index.html"

# The README's result tables are rendered from results/, the committed copy of one run's files.
readme-tables: env ## copy a full run's result files into results/ and render README.md's tables from them
	$(if $(filter 1,$(QUICK)),$(error readme-tables shows a full run: not with QUICK=1),)
	@$(PY) -m tools.readme_tables --collect "$(RUNS)"
	@$(PY) -m tools.readme_tables --write "$(ROOT)/README.md"

segment: caffe ## count nuclei in every image of IN=<folder> -> OUT (maps, labels, overlays, counts.csv, manifest.json)
	@$(PY) -m tools.segment "$(IN)" $(if $(MODEL),--model "$(MODEL)",--objects "$(NET_RUNS)/eval/objects.json") \
	  --engine $(ENGINE) --out "$(OUT)" --diameter "$(DIAMETER)" $(if $(SCHEDULER),--scheduler "$(SCHEDULER)",) \
	  $(if $(WORKERS),--workers $(WORKERS),) $(GPU_ARGS)

export: caffe ## bioimage.io package (ONNX weights, checked equal to Caffe) of MODEL -> runs/export/
	@$(PY) -m tools.export --model "$(or $(MODEL),$(NET_RUNS)/finetune/final.caffemodel)" --net "$(NET)" --manifest "$(DATA)/real/manifest.json" \
	  --out "$(RUNS)/export"

# Table 2 under $(RUNS)/experiments/; an interrupted run goes on where it stopped, finished runs are kept.
experiments: caffe ## Table 2: the report's claim and suggestions tested over seeds -> runs/experiments/
	@$(PY) -m tools.experiments --out "$(RUNS)/experiments" --set $(if $(filter 1,$(QUICK)),quick,$(EXPERIMENTS)) \
	  --cache "$(WHEEL_CACHE)" $(if $(SCHEDULER),--scheduler "$(SCHEDULER)",) $(if $(WORKERS),--workers $(WORKERS),) \
	  $(if $(THREADS),--threads $(THREADS),) $(GPU_ARGS)
	@echo "Table 2: $(RUNS)/experiments/table2.md (plots beside it; \`make report\` adds them to the report)"

bench: caffe $(VENV)/.bench-stamp ## speed: Caffe vs PyTorch training step, segmentation, simcep -> runs/bench/
	@$(PY) -m bench.run_all --out "$(RUNS)/bench" $(if $(filter 1,$(QUICK)),--quick,)

# The Debian releases `make docker-check` builds the CPU image on, one after the other.
RELEASES ?= trixie bookworm
docker-check: ## build the CPU Dockerfile on each of RELEASES with buildah and run the tests inside
	@tools/docker_check.sh $(RELEASES)

clean: ## remove generated outputs (runs/)
	rm -rf "$(RUNS)"

distclean: clean ## also remove the venv and the Caffe builds
	rm -rf "$(VENV)" .caffe .caffe-cuda .caffe-build
