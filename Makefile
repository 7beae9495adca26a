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

.PHONY: setup demo test lint pytest bench clean

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
	@if $(LIPSYNC) weights check $(WEIGHTS) --version $(VERSION) >/dev/null 2>&1 \
	     && [ ! -f $(WEIGHTS)/UNTRAINED.json ]; then \
	  echo "Using the released MuseTalk $(VERSION) weights in $(WEIGHTS)."; weights=$(WEIGHTS); \
	else \
	  echo "################################################################################"; \
	  echo "# No released MuseTalk weights in ./$(WEIGHTS) (see README, 'Weights')."; \
	  echo "# Using TINY UNTRAINED weights instead: the mouth will be random, NOT lip-sync."; \
	  echo "# The output is labelled as untrained. Put the real weights in ./$(WEIGHTS)."; \
	  echo "################################################################################"; \
	  [ -f $(UNTRAINED_WEIGHTS)/UNTRAINED.json ] || $(LIPSYNC) weights scaffold $(UNTRAINED_WEIGHTS) --tiny; \
	  weights=$(UNTRAINED_WEIGHTS); \
	fi; \
	$(LIPSYNC) dub $(DEMO_VIDEO) $(DEMO_AUDIO) -o $(DEMO_OUT) --weights $$weights --version $(VERSION)

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

clean:
	rm -rf out $(UNTRAINED_WEIGHTS) .pytest_cache .mypy_cache .ruff_cache
