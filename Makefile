# kto_lab: the two quick-start targets (README) and their set-up.
#   make figures   set up .venv, reproduce the toy Figures 6 and 9 (+ ablations) into figures/
#   make test      set up .venv (+ the trackers extra), run the test suite (what CI runs)
PY ?= python3
VENV ?= .venv
BIN = $(VENV)/bin
SEEDS ?= 3

.PHONY: setup figures test
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned to the CPU wheel: a bare 'torch' would pull CUDA builds.
	$(BIN)/pip install -q "torch==2.13.0"
	$(BIN)/pip install -q -e ".[test]"
	touch $@

# the three experiment trackers, which tests/test_trackers.py runs for real (about 40 s more)
$(VENV)/.trackers: $(VENV)/.installed
	$(BIN)/pip install -q -e ".[trackers]"
	touch $@

figures: setup
	$(BIN)/kto-lab toy figure6 --out figures --seeds $(SEEDS)
	$(BIN)/kto-lab toy figure9 --out figures
	$(BIN)/kto-lab toy ablations --out figures

test: setup $(VENV)/.trackers
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python -m pytest tests
