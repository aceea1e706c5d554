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
# scikit-learn's wheel ships the `digits` file (dataset=digits); nnlab.data.digits.SKLEARN_VERSION
SKLEARN_VERSION := 1.7.2
DIGITS := $(PKGDATA)/scikit-learn-$(SKLEARN_VERSION)/digits.csv.gz
ARGS   ?=

.PHONY: setup data data-sequences train test lint bench tensorboard clean lock

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
	@# digits (dataset=digits): sklearn/datasets/data/digits.csv.gz from the pinned scikit-learn
	@# wheel (pip download --no-deps; scikit-learn is not installed), unpacked into $(PKGDATA)
	@if [ -f $(DIGITS) ]; then \
		echo "data: digits found in $(DIGITS)"; \
	else \
		tmp=$$(mktemp -d) && \
		$(BIN)/python -m pip download --quiet --no-deps --only-binary=:all: \
			scikit-learn==$(SKLEARN_VERSION) -d $$tmp >/dev/null 2>&1 && \
		$(BIN)/python -c "import sys, zipfile, glob, pathlib; \
			out = pathlib.Path(sys.argv[1]); out.parent.mkdir(parents=True, exist_ok=True); \
			whl = zipfile.ZipFile(glob.glob(sys.argv[2] + '/*.whl')[0]); \
			out.write_bytes(whl.read('sklearn/datasets/data/digits.csv.gz'))" $(DIGITS) $$tmp && \
		echo "data: digits unpacked from scikit-learn==$(SKLEARN_VERSION) into $(DIGITS)" || \
		echo "data: could not fetch scikit-learn==$(SKLEARN_VERSION); dataset=digits will try dataset.data_dir"; \
		rm -rf $$tmp; \
	fi

# Sequence data (issue 17): data files of pinned wheels (pip download --no-deps), unpacked into
# $(PKGDATA)/<package>-<version>/ with the wheel's own layout below its data folder:
#   aeon 1.6.0          every UEA/UCR .ts set it ships (JapaneseVowels, BasicMotions, GunPoint,
#                       ItalyPowerDemand, ...) and Airline.csv
#   sktime 1.2.0        PLAID (long variable-length series; aeon 1.6.0 does not ship it)
#   statsmodels 0.15.0  sunspots.csv (yearly 1700-2008), co2.csv (weekly Mauna Loa 1958-2001)
DATA_PY := $(if $(wildcard $(BIN)/python),$(BIN)/python,$(PYTHON))
# $(call wheel_data,package,version,a file it must give,data folder in the wheel,members to unpack)
define wheel_data
	@out="$(PKGDATA)/$(1)-$(2)"; if [ -f "$$out/$(3)" ]; then echo "data: $(1) $(2) found in $$out"; \
	else tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	$(DATA_PY) -m pip download --quiet --no-deps $(1)==$(2) -d "$$tmp" 2>&1 \
		| { grep -v "is ignored: it is neither" || true; } && \
	unzip -q -o "$$tmp"/$(1)-$(2)-*.whl $(5) -d "$$tmp/x" && mkdir -p "$$out" && \
	cp -r "$$tmp/x/$(4)/." "$$out/" && echo "data: unpacked $(1) $(2)'s data files into $$out"; fi
endef

data-sequences:
	$(call wheel_data,aeon,1.6.0,JapaneseVowels/JapaneseVowels_TEST.ts,aeon/datasets/data,\
		'aeon/datasets/data/*/*.ts' 'aeon/datasets/data/Airline/Airline.csv')
	$(call wheel_data,sktime,1.2.0,PLAID/PLAID_TEST.ts,sktime/datasets/data,\
		'sktime/datasets/data/PLAID/*.ts')
	$(call wheel_data,statsmodels,0.15.0,co2/co2.csv,statsmodels/datasets,\
		'statsmodels/datasets/sunspots/sunspots.csv' 'statsmodels/datasets/co2/co2.csv')

data: data-sequences

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
