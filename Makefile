# Quick start: `make run` (the default sweep) and `make test`. Each creates .venv if missing.
VENV := .venv
BIN := $(VENV)/bin
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: run test lint bench clean

# The pinned CPU build of torch goes first: an unpinned torch would pull a multi-GB CUDA build.
$(BIN)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

run: $(BIN)/.installed
	snakemake --cores all

test: $(BIN)/.installed
	python -m pytest

lint: $(BIN)/.installed
	snakemake --lint

clean:
	rm -rf results/runs results/tables results/figures results/logs .snakemake
