# Two entry points for a fresh machine (Python 3.11 + pip):
#   make demo   -> sets up .venv and runs the main job (flax-bart demo)
#   make test   -> sets up .venv and runs the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: setup demo test bench cross-isa clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/flax-bart demo

test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider

bench: $(STAMP)
	$(BIN)/python -m benchmarks

# The demo under this CPU's ISA and one tier lower, cross-compared (reports/cross-isa/summary.md).
cross-isa: $(STAMP)
	$(BIN)/python -m parity.cross_isa

clean:
	rm -rf $(VENV) reports/demo
