# Everything sets itself up from a clean clone with only Python 3.11 installed.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# OpenMP spin-waiting stalls torch on small shared machines; sleep-waiting does not.
export OMP_WAIT_POLICY := PASSIVE

.PHONY: setup demo test bench docs clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[all,dev]'
	touch $(STAMP)

demo: setup
	$(BIN)/graddoctor demo

test: setup
	$(BIN)/python -m pytest -q

docs: setup
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict
	@echo "the site is in site/ (open site/index.html)"

bench: setup
	@for f in benchmarks/*.py; do echo "== $$f"; $(BIN)/python $$f || exit 1; done

clean:
	rm -rf $(VENV) graddoctor-demo graddoctor-runs .pytest_cache site
