# Two commands work on a fresh machine: `make demo` (set up, then dub a shared clip) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
LIPSYNC := $(VENV)/bin/lipsync
TORCH_SPEC ?= torch==2.13.0

WEIGHTS ?= models
UNTRAINED_WEIGHTS ?= models-untrained
VERSION ?= v15
MEDIA ?= ../shared/media
DEMO_VIDEO ?= $(MEDIA)/talk_c.mp4
DEMO_AUDIO ?= $(MEDIA)/speech_44k_stereo.wav
DEMO_OUT ?= out/demo.mp4

.PHONY: setup demo eval live test lint pytest bench bench-live train-tiny learning-check-ci learning-check-all clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	@# torch is pinned to the cached CPU build unless the environment already has a torch.
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

setup: $(VENV)/.installed

demo: setup
	@mkdir -p $(dir $(DEMO_OUT))
	weights=$$(tools/demo-weights $(LIPSYNC) $(WEIGHTS) $(UNTRAINED_WEIGHTS) $(VERSION)) && \
	$(LIPSYNC) dub $(DEMO_VIDEO) $(DEMO_AUDIO) -o $(DEMO_OUT) --weights $$weights --version $(VERSION)

# Evaluate the demo dub against its source: out/eval-demo/report.{json,html}. Metrics whose public
# weights are not in $(EVAL_WEIGHTS) are listed as skipped (see docs/evaluation.md).
EVAL_WEIGHTS ?= models/eval
eval: demo
	$(LIPSYNC) eval $(DEMO_OUT) --reference $(DEMO_VIDEO) --out out/eval-demo --eval-weights $(EVAL_WEIGHTS) --force

# A live avatar in the browser: prepare the demo clip once, then serve http://127.0.0.1:8765
live: setup
	weights=$$(tools/demo-weights $(LIPSYNC) $(WEIGHTS) $(UNTRAINED_WEIGHTS) $(VERSION)) && \
	$(LIPSYNC) avatar prepare $(DEMO_VIDEO) --name demo --weights $$weights --version $(VERSION) && \
	$(LIPSYNC) serve --weights $$weights --version $(VERSION)

test: setup lint pytest

lint: setup
	$(VENV)/bin/ruff check lipsync tests
	$(VENV)/bin/ruff format --check lipsync tests
	$(VENV)/bin/mypy

pytest: setup
	$(VENV)/bin/pytest -q

# Long runs stay out of `make test`: the full-size (850 M) model checks and the benchmark.
test-slow: setup
	$(VENV)/bin/pytest -q -m slow

bench: setup
	@[ -f $(WEIGHTS)/sd-vae/config.json ] || { echo "no weights in $(WEIGHTS): run '$(LIPSYNC) weights scaffold $(WEIGHTS)' for full-size untrained ones"; exit 2; }
	$(LIPSYNC) bench $(DEMO_VIDEO) $(DEMO_AUDIO) --weights $(WEIGHTS) --version $(VERSION)

# Live-session latency and load: 1, 2 and 4 concurrent WebSocket sessions on loopback.
bench-live: setup
	weights=$$(tools/demo-weights $(LIPSYNC) $(WEIGHTS) $(UNTRAINED_WEIGHTS) $(VERSION)) && \
	$(LIPSYNC) avatar prepare $(DEMO_VIDEO) --name demo --weights $$weights --version $(VERSION) -q && \
	$(LIPSYNC) bench-live --avatar demo --weights $$weights --version $(VERSION) --audio $(DEMO_AUDIO)

# The whole training pipeline in minutes on a CPU, with tiny models: prepare the shared clips, train a
# SyncNet, UNet stage 1 and stage 2, then dub with the export. Shows the machinery, not quality.
TRAIN_SRC ?= data/media-src
TRAIN_DATA ?= data/prepared-media
train-tiny: setup
	[ -f $(UNTRAINED_WEIGHTS)/lipsync.json ] || $(LIPSYNC) weights scaffold $(UNTRAINED_WEIGHTS) --tiny
	mkdir -p $(TRAIN_SRC) out
	for f in $(MEDIA)/talk_*.mp4; do ln -sfn "$$(realpath $$f)" $(TRAIN_SRC)/; done
	$(LIPSYNC) data prepare $(TRAIN_SRC) $(TRAIN_DATA) --clip-seconds 2.6 --weights $(UNTRAINED_WEIGHTS)
	$(LIPSYNC) train syncnet --config configs/train/syncnet-tiny.yaml
	$(LIPSYNC) train unet --config configs/train/unet-tiny.yaml
	$(LIPSYNC) train unet --config configs/train/unet-tiny-stage2.yaml
	$(LIPSYNC) dub $(DEMO_VIDEO) $(DEMO_AUDIO) -o out/train-tiny.mp4 --weights runs/unet-tiny-stage2/export

# The short learning check of CI (after `make test`): a small controlled-sync corpus, then the Wav2Lip-style
# SyncNet and the landmark transformer for a few minutes each, with pass lines; fails when a line is
# missed. About 10 min on 2 CPU cores (configs/learning-check/corpus-ci.yaml).
LC_CI_OUT ?= out/learning-check-ci
LC_CI_FACES ?= $(MEDIA)/talk_a_22fps.mp4 $(MEDIA)/talk_b.mp4 $(MEDIA)/talk_c.mp4
learning-check-ci: setup
	rm -rf $(LC_CI_OUT)
	mkdir -p $(LC_CI_OUT)
	$(LIPSYNC) data synth $(LC_CI_OUT)/corpus --faces $(LC_CI_FACES) --minutes 3 --seed 7 -q
	$(LIPSYNC) learning-check configs/learning-check/corpus-ci.yaml --corpus $(LC_CI_OUT)/corpus \
		--out $(LC_CI_OUT)/run -q

# Every trainable model on an 8-minute controlled-sync corpus, every pass line (configs/learning-check/
# corpus-all.yaml): about 87 min on 2 CPU cores, after the corpus (made once and kept; the run resumes
# finished stages).
LC_ALL_OUT ?= out/learning-check-all
learning-check-all: setup
	test -f $(LC_ALL_OUT)/corpus/synth.json || $(LIPSYNC) data synth $(LC_ALL_OUT)/corpus --faces $(LC_CI_FACES) \
		--minutes 8 --seed 3 -q
	$(LIPSYNC) learning-check configs/learning-check/corpus-all.yaml --corpus $(LC_ALL_OUT)/corpus \
		--out $(LC_ALL_OUT)/run

clean:
	rm -rf out avatars $(TRAIN_SRC) $(TRAIN_DATA) runs/*-tiny runs/*-tiny-stage2 $(UNTRAINED_WEIGHTS) \
		.pytest_cache .mypy_cache .ruff_cache
