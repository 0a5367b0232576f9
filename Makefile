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

# The tests that compare with transformers' PyTorch BART, against the newest transformers v5 the package
# index serves, in a separate environment (the project's own pins stay as they are).
LATEST_VENV ?= .venv-transformers-latest
TRANSFORMERS_TESTS := tests/convert/test_convert_transformers.py tests/flax_bart/test_models_vs_torch.py \
	tests/flax_bart/test_generation_parity.py tests/flax_bart/test_labels_from_weights.py \
	tests/flax_bart/test_untied_embeddings.py \
	tests/flax_bart/test_loading.py tests/parity/test_reference.py

test-transformers-latest:
	$(PYTHON) -m venv $(LATEST_VENV)
	$(LATEST_VENV)/bin/pip install --quiet --upgrade pip
	$(LATEST_VENV)/bin/pip install --quiet -e ".[test]"
	$(LATEST_VENV)/bin/pip install --quiet --upgrade "transformers>=5,<6"
	$(LATEST_VENV)/bin/python -c "import transformers; print('transformers', transformers.__version__)"
	$(LATEST_VENV)/bin/python -m pytest -q -p no:cacheprovider $(TRANSFORMERS_TESTS)

bench: $(STAMP)
	$(BIN)/python -m benchmarks

# The demo under this CPU's ISA and one tier lower, cross-compared (reports/cross-isa/summary.md).
cross-isa: $(STAMP)
	$(BIN)/python -m parity.cross_isa

clean:
	rm -rf $(VENV) $(LATEST_VENV) reports/demo
