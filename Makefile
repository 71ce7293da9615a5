# Two commands do all the set-up on a fresh machine:
#
#     make demo    # the main job: single vs Cut-MixMo vs MixShare on the embedded digits
#     make test    # the test suite (what .ci/run runs)
#     make bench   # the benchmark report (benchmarks/README.md)
#     make gpu-check   # the GPU check's dry run on CPU (benchmarks/gpu_check.sh)
#
# The Python environment: $(PYTHON)'s own when it already is a virtual
# environment (e.g. a GPU machine's, with its CUDA torch), else .venv, created
# seeing the system's packages. torch is installed only if none is importable
# (torch==2.13.0: a CPU wheel on the CPU machines), then requirements.txt (what
# the package and the demo use) and, for tests and benchmarks only,
# requirements-dev.txt; then the C++ (and, with a GPU, CUDA) extension is built
# in place. pip fetches nothing for requirements already satisfied.

PYTHON ?= python3
VENV ?= .venv
IN_VENV := $(shell $(PYTHON) -c "import sys; print(int(sys.prefix != sys.base_prefix))" 2>/dev/null)
ifeq ($(IN_VENV),1)
PY := $(shell $(PYTHON) -c "import sys; print(sys.executable)")
STAMPS := build/make
else
PY := $(VENV)/bin/python
STAMPS := $(VENV)
endif
BIN := $(dir $(PY))
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=
# ninja prints one [n/9] line per finished object (pip shows them with -v).
BUILD_MESSAGE := mixshare_ops: compiling the C++ extension (about 3 minutes on 2 cores, more with CUDA) ...
CSRC := $(wildcard csrc/*.h csrc/*.cpp csrc/cpu/*.h csrc/cpu/*.cpp csrc/cuda/*.cu csrc/cuda/*.cuh)

DEMO_OUT ?= runs/demo
# Sized for 2 CPU cores: 10 runs (5 methods, seeds 0 and 1) of WRN-10-1, 15
# epochs, no batch repetition, batches of 32 rows; lr 0.1, warmup and decays
# at 50% and 75% are the digits defaults (mixshare/config.py); each run is
# then evaluated under corruption and OOD (shift_eval), and the two single
# networks make the Deep-Ensemble row; one run of each method and the Deep
# Ensemble are then timed side by side. Measured 2026-12-07 on a quiet 2-core
# AMD EPYC: 8 min 14 s (about 48 s a run, 10 s of it the shift evaluation); a
# loaded machine takes several times as long.
# DEMO_SEEDS=0 halves it; runs already in DEMO_OUT are read back, not retrained.
DEMO_SEEDS ?= 0 1
DEMO_METHODS ?= single multihead cut-mixmo unmix-align mixshare-fadeout
DEMO_ARGS ?= --dataset digits --model wrn-10-1 --epochs 15 --seeds $(DEMO_SEEDS) --no-progress \
	--set batch_repetition=1 batch_size=32 shift_eval=true

.PHONY: setup build test test-fast demo bench gpu-check clean

# Run-time requirements (what the demo uses) and, for tests and benchmarks,
# the development ones on top.
$(STAMPS)/.runtime-deps: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv --system-site-packages $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install "$(TORCH_SPEC)"
	$(PY) -m pip install -r requirements.txt
	mkdir -p $(STAMPS) && touch $@

$(STAMPS)/.dev-deps: $(STAMPS)/.runtime-deps requirements-dev.txt
	$(PY) -m pip install -r requirements-dev.txt
	touch $@

$(STAMPS)/.installed: $(STAMPS)/.runtime-deps setup.py pyproject.toml requirements.txt
	@echo "$(BUILD_MESSAGE)"
	$(PY) -m pip install -v --no-build-isolation --no-deps -e .
	touch $@

# The editable install builds the extension; rebuild in place (incrementally,
# with ninja) only when a source is newer than the built library.
mixshare_ops/_C.so: $(STAMPS)/.installed $(CSRC)
	if [ ! -f $@ ] || [ -n "$$(find $(CSRC) -newer $@)" ]; then echo "$(BUILD_MESSAGE)"; $(PY) setup.py -q build_ext --inplace; fi
	touch $@

# build: the package and its kernels with the run-time requirements only;
# setup: the development requirements too.
build: mixshare_ops/_C.so

setup: build $(STAMPS)/.dev-deps

test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

# The suite without the slow build checks (CMake, nvcc).
test-fast: setup
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

demo: build
	$(BIN)mixshare compare --methods $(DEMO_METHODS) --out $(DEMO_OUT) $(DEMO_ARGS)
	@echo "plots and metrics: $(DEMO_OUT)/<method>/seed<k>/; table: $(DEMO_OUT)/compare.md"

# The benchmark report (CPU providers and shapes on a CPU machine).
BENCH_OUT ?= benchmarks/results/latest
bench: setup
	$(PY) -m benchmarks.report --out $(BENCH_OUT)

# The GPU check's logic on CPU (what CI tests); on a GPU machine run
# `bash benchmarks/gpu_check.sh` itself, with that machine's python3.
GPU_CHECK_OUT ?= build/gpu-check
gpu-check: setup
	rm -rf $(GPU_CHECK_OUT) && DRY_RUN=1 PY=$(PY) OUT=$(GPU_CHECK_OUT) bash benchmarks/gpu_check.sh

clean:
	rm -rf build mixshare_ops/_C*.so *.egg-info
