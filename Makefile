# Two commands for a fresh machine: `make demo` runs the main job, `make test` runs the tests.
# Each creates .venv and installs MOPS into it the first time.
#
# CONSTRAINTS pins the CPU build of PyTorch; on a GPU machine use `make test CONSTRAINTS=`
# to let pip pick the CUDA build your driver needs.

PYTHON      ?= python3
VENV        ?= .venv
CONSTRAINTS ?= constraints/cpu.txt
BIN         := $(VENV)/bin

.PHONY: demo test bench gpu-check install clean

$(BIN)/.installed: pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(if $(CONSTRAINTS),-c $(CONSTRAINTS)) -e '.[test]'
	touch $@

install: $(BIN)/.installed

demo: $(BIN)/.installed
	$(BIN)/mops demo

test: $(BIN)/.installed
	$(BIN)/python -m pytest

bench: $(BIN)/.installed
	$(BIN)/python -m pytest --benchmark

# On a GPU machine, with the torch, Triton and pytest it has (no venv, no downloads): benchmarks,
# 60-second training runs side by side and the whole test suite, within eight minutes, into
# bench/results/GPU-TIME/. DATA= a CS224N folder (default: the demo corpus); CHECKPOINT= a
# checkpoint folder, which also stands in for the embedded one where that package is absent.
gpu-check:
	$(PYTHON) -m pip install --quiet --no-deps --no-build-isolation --no-index -e . \
		|| echo "gpu-check: could not install MOPS in place; running it from this folder"
	$(PYTHON) -m mops gpu-check$(if $(DATA), --data "$(DATA)")$(if $(CHECKPOINT), --checkpoint "$(CHECKPOINT)")

clean:
	rm -rf $(VENV) .pytest_cache .benchmarks
