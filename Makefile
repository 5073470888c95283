# The two commands a new user needs:  make demo   and   make test
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# torchrec is installed without its dependencies: its metadata asks for the CUDA
# fbgemm-gpu, which would replace fbgemm-gpu-cpu (pinned with torch in pyproject.toml).
TORCHREC := torchrec==1.8.0

.PHONY: setup demo test bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	$(BIN)/python -m pip install -q --no-deps '$(TORCHREC)'
	$(BIN)/python -c "import torch, fbgemm_gpu, torchrec; print('stack:', torch.__version__, 'torchrec', torchrec.__version__)"
	@touch $(STAMP)

demo: setup
	$(BIN)/onerec-demo out_dir=demo_out

test: setup
	$(BIN)/python -m pytest

bench: setup
	$(BIN)/python -m benchmarks.bench_train
	$(BIN)/python -m benchmarks.bench_moe

clean:
	rm -rf demo_out .pytest_cache
