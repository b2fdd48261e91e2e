# make bench: set up .venv and benchmark one SD-Turbo-size UNet call (random weights) on ORT CPU.
# make test:  set up .venv and run the CPU test suite (what CI runs).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.ort-turbo-setup

.PHONY: setup test bench clean

setup: $(STAMP)

$(STAMP): requirements-dev.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -r requirements-dev.txt
	$(PY) -m pip install -q --no-deps stable-diffusion-sdkit==2.1.5
	touch $(STAMP)

test: setup
	$(PY) -m pytest -q tests

bench: setup
	$(PY) -m lib_ort bench --arch sd-turbo --ep cpu --unfused --json

clean:
	rm -rf $(VENV) artefacts
