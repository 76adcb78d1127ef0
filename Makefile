# Two commands on a fresh machine: `make demo` and `make test`.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: demo test lint bench reliability clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

# torch first, pinned: this machine serves 2.13.0 as a local CPU wheel; an unpinned
# torch would pull several GB of CUDA packages.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/lmforge quickstart

test: $(STAMP) lint
	$(BIN)/python -m pytest -q

# ruff, configured in pyproject.toml (line length 120): lint, and the formatting it would apply
lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks reliability
	$(BIN)/ruff format --check src tests benchmarks reliability

bench: $(STAMP)
	$(BIN)/python benchmarks/pretrain_throughput.py
	$(BIN)/python benchmarks/shakespeare_quality.py
	$(BIN)/python benchmarks/corpus_throughput.py
	$(BIN)/python benchmarks/finetune_glue.py --threads 2

# kill -9 trials (20 pretraining, 10 fine-tuning) and the bad-input table; CI runs a short version (tests/test_reliability.py)
reliability: $(STAMP)
	$(BIN)/python reliability/kill_trials.py --pretrain 20 --finetune 10
	$(BIN)/python reliability/bad_inputs.py

clean:
	rm -rf $(VENV) runs .pytest_cache
