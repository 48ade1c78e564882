# Fresh machine: `make train` and `make test` are all the set-up there is.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
export TF_CPP_MIN_LOG_LEVEL ?= 2
export KERAS_BACKEND ?= tensorflow
# oneDNN on AVX2-only CPUs too, as keras-vit's commands do (pipelines/onednn.py).
export TF_ENABLE_ONEDNN_OPTS ?= 1

# The layer and model tests run a second time on JAX: keras_vit/ is keras.ops only.
BACKEND_TESTS := $(wildcard tests/test_layers_*.py) tests/test_models.py
PYTEST := $(PY) -m pytest -n 2 --dist loadfile

.PHONY: test test-tf test-jax test-fast lint train demo-multiworker bench tune clean

$(STAMP): constraints.txt setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev,bench]'
	touch $(STAMP)

test: test-tf test-jax

test-tf: $(STAMP)
	KERAS_BACKEND=tensorflow $(PYTEST) tests

# Most of the JAX run's time is XLA compiling each small eager op: a lower LLVM
# optimisation level halves that, and a persistent cache shares the compiled ops
# between the two workers (and with the next run).
JAX_TEST_ENV := KERAS_BACKEND=jax JAX_PLATFORMS=cpu \
	XLA_FLAGS="--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true" \
	JAX_COMPILATION_CACHE_DIR=$(abspath $(VENV))/jax-cache \
	JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0 JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES=0

test-jax: $(STAMP)
	$(JAX_TEST_ENV) $(PY) -m pytest -n 2 -m "not tensorflow_only" $(BACKEND_TESTS)

# Everything but the end-to-end (training, export, subprocess) tests, TensorFlow only.
test-fast: $(STAMP)
	KERAS_BACKEND=tensorflow $(PYTEST) -m "not slow" tests

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# Run again, `make train` trains again: the finished run is moved aside (runs/digits.old-<time>).
train: $(STAMP)
	$(VENV)/bin/keras-vit train --overwrite

# Two `keras-vit train --distribute multi_worker` processes on 127.0.0.1 (docs/distributed.md).
demo-multiworker: $(STAMP)
	PYTHON=$(PY) scripts/demo_multiworker.sh

bench: $(STAMP)
	$(PY) -m benchmarks

clean:
	rm -rf $(VENV) runs build *.egg-info
