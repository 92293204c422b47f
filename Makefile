# Two entry points: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
OUT    ?= results

.PHONY: demo test test-all install bench clean

$(VENV)/.installed: pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) on PATH (or make PYTHON=python3)"; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	@touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/sensitivity run experiments/quickstart.yaml --out $(OUT)
	$(VENV)/bin/sensitivity plot $(OUT)/quickstart --out $(OUT)/quickstart/figures
	@echo "tables:  $(OUT)/quickstart/trials.parquet, $(OUT)/quickstart/curves.parquet"
	@echo "figures: $(OUT)/quickstart/figures/"

test: $(VENV)/.installed
	$(PY) -m pytest -q -m "not exhaustive"

test-all: $(VENV)/.installed  # also smoke-runs the VGG16/ResNet study files through Ray (+3 min)
	$(PY) -m pytest -q

bench: $(VENV)/.installed
	$(PY) benchmarks/optim_step.py
	$(PY) benchmarks/train_throughput.py
	$(PY) benchmarks/sweep_throughput.py
	$(PY) benchmarks/results_store.py
	$(PY) benchmarks/fused_throughput.py

clean:
	rm -rf $(VENV) results
