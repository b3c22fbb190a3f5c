# detlosses: `make test` runs the test suite, `make demo` runs the main job.
# Both create the virtual environment (.venv) on first use.
PYTHON ?= python3.11
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.detlosses-installed

.PHONY: test demo bench lint clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
	$(PY) -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadgroup

# ImageNet MobileNetV2 weights from ../shared when present (offline); otherwise the backbone starts from scratch.
WEIGHTS ?= ../shared/weights
PRETRAINED = $(if $(wildcard $(WEIGHTS)/*.pth),--pretrained-backbone --weights-dir $(WEIGHTS),--no-pretrained-backbone)

demo: $(STAMP)
	$(VENV)/bin/detlosses compare --config configs/demo.yaml --losses focal,ap,rank_sort --seeds 0 \
		--out runs/demo $(PRETRAINED)

bench: $(STAMP)
	$(PY) -m benchmarks.losses --sizes full --json benchmarks/results/losses.json --markdown benchmarks/results/losses.md
	$(PY) -m benchmarks.launches --sizes 100000x100,1000000x1000 --criteria all --json benchmarks/results/launches.json \
		--markdown benchmarks/results/launches.md

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
