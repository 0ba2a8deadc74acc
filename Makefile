# Quick start: `make run` (the default sweep) and `make test` (the fast tier). Each creates .venv
# if missing. `make test-all` adds the end-to-end tier (what CI runs), `make lint` the linters.
VENV := .venv
BIN := $(VENV)/bin
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: run test test-all lint bench clean

# The pinned CPU build of torch goes first: an unpinned torch would pull a multi-GB CUDA build.
$(BIN)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test,lint]'
	touch $@

run: $(BIN)/.installed
	snakemake --cores all

test: $(BIN)/.installed
	python -m pytest -m "not slow"

test-all: $(BIN)/.installed
	python -m pytest

lint: $(BIN)/.installed
	ruff check .
	ruff format --check .
	snakefmt --check Snakefile workflow/rules
	@git ls-files -z | xargs -0 du -b | awk '$$1 > 1000000 && $$2 !~ /^results\/models\// \
		{ print "tracked file over 1 MB: " $$2; bad = 1 } END { exit bad }'
	snakemake --lint

bench: $(BIN)/.installed
	snakemake --cores all bench

clean:
	rm -rf results/runs results/tables results/figures results/logs results/retrained results/retry .snakemake
