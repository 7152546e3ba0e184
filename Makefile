# sasa_fastai: everything a new user or CI runs. `make test` and `make demo` set up a local .venv on first use.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
FLAGS ?=

.PHONY: test demo demo-sweep imagenette imagenette-maps bench memory onnx-speed gpu-check readme sync-check readme-check lint nbtest clean-venv arm-check

$(STAMP): settings.ini setup.py
	@test -x $(PY) || python3 -m venv $(VENV)
	@echo "Installing sasa_fastai and its dev tools into $(VENV) (first run: a few minutes)..."
	@set -e; $(PY) -m pip install --disable-pip-version-check -q -e '.[dev]' 2>&1 | { grep -v '^WARNING: Location' || true; }
	@touch $(STAMP)

# nbdev's CI checks: notebooks clean, library in sync with the notebooks (fails if either command changes a file)
sync-check: $(STAMP)
	@before=$$(git diff --no-ext-diff | sha1sum; git status --porcelain); \
	$(VENV)/bin/nbdev_clean; $(VENV)/bin/nbdev_export; \
	after=$$(git diff --no-ext-diff | sha1sum; git status --porcelain); \
	if [ "$$before" != "$$after" ]; then \
	  echo "nbdev_clean/nbdev_export changed files: notebooks not clean or library not in sync with nbs/:"; \
	  git status --short; exit 1; fi; echo "notebooks clean, library in sync"

# README.md is generated from nbs/index.ipynb
readme: $(STAMP)
	@$(PY) tools/make_readme.py README.md

readme-check: $(STAMP)
	@$(PY) tools/make_readme.py --check README.md

# every line of code fits in 120 columns (the width the notebooks render without scrolling)
lint:
	@python3 tools/lint.py

nbtest: $(STAMP)
	@# OpenMP threads sleep instead of spinning when idle: with notebooks in parallel, spinning made steps 30-50x slower
	@cd nbs && OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE ../$(VENV)/bin/nbdev_test --do_print --timing --flags "$(FLAGS)" 2>&1 | tee ../.nbtest.log; \
	rc=$$?; cd ..; \
	total=$$(grep -c '^Starting' .nbtest.log); \
	failed=$$(sed -n '/Tests Failed On The Following Notebooks/,$$p' .nbtest.log | grep -c $$'^\t'); \
	echo "$$((total - failed)) passed, $$failed failed"; exit $$rc

test: sync-check readme-check lint nbtest

# demo: SASA-ResNet-26 on the embedded digits, on the CPU (2 threads unless OMP_NUM_THREADS is set); log in out/demo/train.log
# (the flags are `DEMO` of nbs/13_learner.ipynb, which a test keeps equal to this line)
demo: $(STAMP)
	@mkdir -p out/demo; start=$$(date +%s); \
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-2} CUDA_VISIBLE_DEVICES= \
	  $(VENV)/bin/sasa_train --data digits --arch sasa_resnet26 --size 48 --bs 16 --lr 0.003 --epochs 12 --seed 42 --out out/demo --overwrite 2>&1 | tee out/demo/train.log; \
	echo "demo training wall time: $$(( $$(date +%s) - start ))s" | tee -a out/demo/train.log
	@img=$$($(PY) -W ignore::FutureWarning -c "from sasa_fastai.datasets import digits_folder; print(sorted((digits_folder() / 'val').rglob('*.png'))[0])") && \
	  $(VENV)/bin/sasa_maps "$$img" --model out/demo/model --out out/demo/attention_maps.png  # nbs/12_visualize.ipynb

# the demo recipe over five seeds: results/demo_sweep.md and .json (the README's demo figures)
demo-sweep: $(STAMP)
	@OMP_NUM_THREADS=$${OMP_NUM_THREADS:-2} $(PY) tools/demo_sweep.py

# conv ResNet-26 against SASA-ResNet-26 on Imagenette, one recipe (the CPU one: 64 px, 5 epochs, batch 32; about 45
# minutes on 2 cores): results/imagenette/results.md, results.json, accuracy.png and every run's history and log.
# DATA is what `get_dls` takes (default: fastai's Imagenette, found or downloaded), e.g. DATA=/path/to/imagenette2-160;
# COMPARE_ARGS adds flags, e.g. COMPARE_ARGS="--recipe gpu" (128 px, 20 epochs, all four variants, three seeds).
DATA ?= imagenette
imagenette: $(STAMP)
	@OMP_NUM_THREADS=$${OMP_NUM_THREADS:-2} $(VENV)/bin/sasa_compare --data $(DATA) --out results/imagenette $(COMPARE_ARGS)

# the CPU benchmark: results/bench/bench.md and bench.json (the README's tables)
bench: $(STAMP)
	@$(VENV)/bin/sasa_bench --out results/bench $(BENCH_ARGS)

# on a CUDA machine: the GPU kernels' agreement, the layer and ResNet-50 targets, a training run (results/gpu_check.md)
gpu-check: $(STAMP)
	@$(PY) tools/gpu_check.py --out results/gpu_check.md

# ARM: the CPU kernel cross-compiled for aarch64 and run under qemu-aarch64 against an x86-64 build on the same inputs,
# forward and backward (tools/arm_check.py); installs Debian's g++-aarch64-linux-gnu and qemu-user first when missing
arm-check: $(STAMP)
	@if ! command -v aarch64-linux-gnu-g++ >/dev/null || ! command -v qemu-aarch64 >/dev/null; then \
	  sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); echo "Installing g++-aarch64-linux-gnu and qemu-user with apt-get..."; \
	  $$sudo apt-get update -qq && \
	  $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq g++-aarch64-linux-gnu qemu-user; fi
	@$(PY) tools/arm_check.py $(ARM_ARGS)

clean-venv:
	rm -rf $(VENV)

# the README's attention picture: sasa_maps with the SASA model of `make imagenette` on one validation photo (a garbage
# truck), query on the truck. DATA must be the Imagenette folder, e.g. make imagenette-maps DATA=/path/to/imagenette2-160
MAPS_PHOTO ?= val/n03417042/ILSVRC2012_val_00006922.JPEG
imagenette-maps: $(STAMP)
	@$(VENV)/bin/sasa_maps $(DATA)/$(MAPS_PHOTO) --query 34 28 --out nbs/images/imagenette_attention_maps.png \
	  --model results/imagenette/$(notdir $(DATA))-64px-5ep-bs32-lr0.002/sasa-seed42/model

# an exported SASA-ResNet-26 on onnxruntime against PyTorch, on the CPU: results/onnx_speed.md (the README's figures)
onnx-speed: $(STAMP)
	@OMP_NUM_THREADS=$${OMP_NUM_THREADS:-2} $(PY) -c "from pathlib import Path; from sasa_fastai.ecosystem import \
	  onnx_speed, onnx_speed_markdown; from sasa_fastai.report import machine_info, machine_line; \
	  r = onnx_speed(); md = f'{machine_line(machine_info())}\n\n' + onnx_speed_markdown(r) + '\n'; print(md); \
	  Path('results/onnx_speed.md').write_text('\`make onnx-speed\`\n\n' + md)"

# the memory estimate of a training step against measured peaks (both models, three sizes): results/memory.md
memory: $(STAMP)
	@OMP_NUM_THREADS=$${OMP_NUM_THREADS:-2} $(PY) tools/memory_check.py
