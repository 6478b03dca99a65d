# Two commands on a fresh machine:  `make demo` (a quick tuned sweep, then its HTML report; prints the path)
# and `make test`. Both make .venv first. torch goes in before everything else, pinned, so pip never
# resolves an unpinned torch (which pulls several GB of CUDA packages on a CPU-only machine).
# On a machine without a local CPU wheel of torch, point pip at PyTorch's CPU wheel index:
#   make test TORCH_PIP_ARGS="--index-url <PyTorch CPU wheel index>"
PYTHON ?= python3
TORCH ?= torch==2.13.0
TORCH_PIP_ARGS ?=
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q $(TORCH_PIP_ARGS) "$(TORCH)"
	$(BIN)/pip install -q -e ".[test]"
	touch $@

demo: $(VENV)/.installed
	$(BIN)/probe sweep sweeps/quick.py --workers 2
	$(BIN)/probe report sweeps/quick.py -o reports/quick.html

test: $(VENV)/.installed
	$(BIN)/python -m pytest -q -n 2

clean:
	rm -rf $(VENV) runs .pytest_cache
