# Two entry points: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
OUT    ?= results

.PHONY: demo test test-all install notebook bench gpu-check clean

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

# JupyterLab on analysis/notebooks; study.ipynb and compare.ipynb open results/quickstart (`make demo` writes it)
notebook: $(VENV)/.installed
	@test -d results/quickstart || echo "note: no results/quickstart yet; run 'make demo' first (the notebooks read it)"
	@test -x $(VENV)/bin/jupyter-lab || $(PY) -m pip install --quiet -e '.[notebooks]'
	$(VENV)/bin/jupyter-lab analysis/notebooks

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
	$(PY) benchmarks/fused_conv.py
	$(PY) benchmarks/report_scale.py
	$(PY) benchmarks/scale.py

# On a machine with CUDA: the CUDA tests, the GPU benchmarks, a fused study and fused-vs-solo agreement,
# as one table (< 8 min). Without CUDA it says so and exits 0; `--dry-run` checks the command on a CPU.
gpu-check: $(VENV)/.installed
	$(PY) benchmarks/gpu_check.py

clean:
	rm -rf $(VENV) results
