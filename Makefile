# make bench: set up .venv and benchmark one SD-Turbo-size UNet call (random weights) on the provider
#             the WebUI's Automatic would use here (this venv's onnxruntime: the CPU provider on a CPU machine).
# make test:  set up both environments and run the CPU test suite (what CI runs).
#   .venv        engine + Olive toolchain (requirements-dev.txt)
#   .venv-webui  a WebUI-v1.10.1-like environment for the adapter and browser tests (requirements-webui.txt)
#   .venv-openvino  onnxruntime-openvino and numpy: the engine tests run the OpenVINO provider for real
#                   through it (it replaces onnxruntime, so it cannot sit in .venv)
# The browser tests drive headless Chromium (Debian packages chromium, chromium-driver; installed with
# apt-get when missing, as root or through sudo). Without them the tests fail; they never skip.
VENV ?= .venv
WEBUI_VENV ?= .venv-webui
PY := $(VENV)/bin/python
WEBUI_PY := $(WEBUI_VENV)/bin/python
STAMP := $(VENV)/.ort-turbo-setup
WEBUI_STAMP := $(WEBUI_VENV)/.ort-turbo-setup
OPENVINO_VENV ?= .venv-openvino
OPENVINO_PY := $(OPENVINO_VENV)/bin/python
OPENVINO_STAMP := $(OPENVINO_VENV)/.ort-turbo-setup
SDKIT := stable-diffusion-sdkit==2.1.5

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup setup-webui setup-openvino chromium test test-engine test-webui test-openvino test-browser test-js \
	test-gpu-dry-run gpu-rehearsal gpu-wheels screenshots bench clean

setup: $(STAMP)

setup-webui: $(WEBUI_STAMP)

$(STAMP): requirements-dev.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -r requirements-dev.txt
	$(PY) -m pip install -q --no-deps $(SDKIT)
	touch $(STAMP)

$(WEBUI_STAMP): requirements-webui.txt
	test -x $(WEBUI_PY) || python3 -m venv $(WEBUI_VENV)
	$(WEBUI_PY) -m pip install -q -r requirements-webui.txt
	$(WEBUI_PY) -m pip install -q --no-deps $(SDKIT)
	touch $(WEBUI_STAMP)

$(OPENVINO_STAMP):
	test -x $(OPENVINO_PY) || python3 -m venv $(OPENVINO_VENV)
	$(OPENVINO_PY) -m pip install -q "onnxruntime-openvino>=1.23.0" numpy
	touch $(OPENVINO_STAMP)

setup-openvino: $(OPENVINO_STAMP)

test: test-js test-engine test-webui test-browser gpu-rehearsal

test-engine: setup setup-openvino
	ORT_TURBO_OPENVINO_PYTHON=$(abspath $(OPENVINO_PY)) $(PY) -m pytest -q tests --ignore=tests/webui --ignore=tests/browser

# the GPU check's CPU dry run (also part of test-engine): CPU provider, tiny sizes, GPU steps skipped
test-gpu-dry-run: setup
	$(PY) -m pytest -q tests/gpu/test_dry_run.py

# The GPU check's rehearsal (docs/gpu-check.md): .venv-gpu is the GPU machine's software (Python 3.12,
# torch 2.11.0, numpy 2.5.2, onnxruntime 1.30.0 CPU, ...) installed with --no-index --no-deps from
# .gpu-base only; tests/gpu/run.py then adds the carried parts (.gpu-wheels) exactly as it does there, and
# runs every step with the CPU provider standing in. Fails when a step fails or a carried wheel is missing.
# the first Python 3.12 that runs (a pyenv shim without a selected version exits 127)
PY312 ?= $(shell for p in $$(command -v python3.12) /root/.pyenv/versions/3.12*/bin/python3.12; do \
	"$$p" -c '' 2>/dev/null && { echo "$$p"; break; }; done)
GPU_VENV ?= .venv-gpu
GPU_PY := $(GPU_VENV)/bin/python
GPU_WHEELS_STAMP := .gpu-wheels/MANIFEST.json
GPU_STAMP := $(GPU_VENV)/.ort-turbo-setup
GPU_OUT ?= gpu-out

gpu-wheels: $(GPU_WHEELS_STAMP)

$(GPU_WHEELS_STAMP): tests/gpu/prepare_wheels.py
	python3 tests/gpu/prepare_wheels.py

$(GPU_STAMP): $(GPU_WHEELS_STAMP)
	@test -n "$(PY312)" || { echo "the GPU rehearsal needs Python 3.12 (the GPU machine's); set PY312=/path/to/python3.12" >&2; exit 1; }
	rm -rf $(GPU_VENV) && $(PY312) -m venv $(GPU_VENV)
	$(GPU_PY) -m pip install -q --no-index --no-deps --disable-pip-version-check .gpu-base/*.whl
	touch $(GPU_STAMP)

gpu-rehearsal: $(GPU_STAMP)
	rm -rf .gpu-work
	$(GPU_PY) tests/gpu/run.py $(GPU_OUT) --wheels .gpu-wheels --budget 900
	PYTHONPATH=.gpu-wheels/site $(GPU_PY) -m pytest -q -p no:cacheprovider tests/test_fusion_shim.py tests/gpu/test_dry_run.py

# the OpenVINO provider for real: tiny models optimized in .venv, run by .venv-openvino (fp32; bf16 on CPUs with it)
test-openvino: setup setup-openvino
	ORT_TURBO_OPENVINO_PYTHON=$(abspath $(OPENVINO_PY)) $(PY) -m pytest -q tests/test_openvino_run.py

test-webui: setup setup-webui
	ORT_TURBO_TOOLCHAIN_PYTHON=$(abspath $(PY)) $(WEBUI_PY) -m pytest -q -p no:cacheprovider tests/webui

chromium:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
		$(SUDO) apt-get update && $(SUDO) apt-get install -y --no-install-recommends chromium chromium-driver; \
	fi
	@chromium --version && chromedriver --version || \
		{ echo "the browser tests need chromium and chromedriver (Debian: apt-get install chromium chromium-driver)" >&2; exit 1; }

test-browser: setup-webui chromium
	$(WEBUI_PY) -m pytest -q -p no:cacheprovider tests/browser

# the README's screenshots (docs/img), taken by the browser tests
screenshots: setup-webui chromium
	ORT_TURBO_SCREENSHOTS=docs/img $(WEBUI_PY) -m pytest -q -p no:cacheprovider tests/browser/test_tab.py

test-js:
	node --test tests/js/

bench: setup
	$(PY) -m lib_ort bench --arch sd-turbo --ep automatic --unfused --json

clean:
	rm -rf $(VENV) $(WEBUI_VENV) $(OPENVINO_VENV) $(GPU_VENV) .gpu-wheels .gpu-base .gpu-work artefacts
