# Two commands for a fresh machine: `make demo` runs the main job, `make test` runs the tests.
# Each creates .venv and installs MOPS into it the first time.
#
# CONSTRAINTS pins the CPU build of PyTorch; on a GPU machine use `make test CONSTRAINTS=`
# to let pip pick the CUDA build your driver needs.

PYTHON      ?= python3
VENV        ?= .venv
CONSTRAINTS ?= constraints/cpu.txt
BIN         := $(VENV)/bin

.PHONY: demo test bench install clean

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

clean:
	rm -rf $(VENV) .pytest_cache .benchmarks
