# Two commands on a fresh machine:  `make demo` (train a small model, print where the record went)
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
	mkdir -p runs
	$(BIN)/probe train --task mqar --arch attention --vocab-size 64 --seq-len 32 --num-kv-pairs 4 \
	  --eval-seq-lens 64 --d-model 64 --lr 3e-3 --max-steps 800 --num-train 4000 --num-test 500 \
	  --val-every 100 --device cpu --json runs/demo.json

test: $(VENV)/.installed
	$(BIN)/python -m pytest -q -n 2

clean:
	rm -rf $(VENV) runs .pytest_cache
